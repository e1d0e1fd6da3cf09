"""Object-storage throughput of the runtime's client (boto3 + s3transfer) against versitygw.

    PYTHONPATH=operator:trainer_image .venv/bin/python bench/s3_throughput.py [--gib 2] [--port 29090]

Starts the real S3 server of the tests (`hack/s3.sh up`, loopback) and moves one file of
`--gib` GiB up and down, twice: with the settings the trainer and server use
(`kubetune_trainer.storage.transfer`: multipart, 64 MiB parts, 8 in flight) and, as the
baseline, one stream (a single PUT / GET, no parts). Prints MiB/s for each direction and the
ratio, plus a folder of 200 small files (a checkpoint's or tokenizer's shape) with the manifest.
Both ends share this machine's cores and disk, so the figures bound what a pod would see from
a store on the same host; they say nothing about a network link.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _server(state: Path, port: int) -> None:
    subprocess.run([str(ROOT / "hack" / "s3.sh"), "up", str(state), str(port)], check=True)
    env = subprocess.run(
        [str(ROOT / "hack" / "s3.sh"), "env", str(port)], check=True, capture_output=True, text=True
    ).stdout
    for line in env.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value.strip('"')


def _write(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


def _timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.0, help="size of the large file")
    p.add_argument("--port", type=int, default=29090)
    args = p.parse_args(argv)
    from boto3.s3.transfer import TransferConfig

    from kubetune_trainer.storage import transfer
    from kubetune_trainer.storage.client import s3_client

    with tempfile.TemporaryDirectory(prefix="s3-bench-") as tmp:
        work = Path(tmp)
        _server(work / "server", args.port)
        try:
            size = int(args.gib * 1024) * MIB
            big = work / "big.bin"
            _write(big, size)
            client, mib = s3_client(), size / MIB
            single = TransferConfig(
                multipart_threshold=size * 2, max_concurrency=1, use_threads=False
            )
            rows = []
            for label, cfg in (
                ("multipart 64 MiB x 8", transfer._transfer_config()),
                ("one stream", single),
            ):
                up = _timed(
                    lambda c=cfg: client.upload_file(str(big), "kubetune", "big.bin", Config=c)
                )
                down = _timed(
                    lambda c=cfg: client.download_file(
                        "kubetune", "big.bin", str(work / "back.bin"), Config=c
                    )
                )
                assert (work / "back.bin").stat().st_size == size
                (work / "back.bin").unlink()
                rows.append((label, mib / up, mib / down))
                print(
                    f"{label:22s} upload {mib / up:8.1f} MiB/s   "
                    f"download {mib / down:8.1f} MiB/s   ({args.gib:g} GiB)"
                )
            print(
                f"ratio multipart/one-stream: upload {rows[0][1] / rows[1][1]:.2f}x, "
                f"download {rows[0][2] / rows[1][2]:.2f}x"
            )
            big.unlink()
            folder = work / "folder"
            folder.mkdir()
            for i in range(200):
                (folder / f"f{i:03d}.bin").write_bytes(os.urandom(64 * 1024))
            up = _timed(lambda: transfer.upload_tree(folder, "s3://kubetune/folder"))
            os.environ["KUBETUNE_STORAGE_CACHE"] = str(work / "cache")
            down = _timed(lambda: transfer.download("s3://kubetune/folder/"))
            again = _timed(lambda: transfer.download("s3://kubetune/folder/"))
            print(
                f"200 x 64 KiB folder    upload_tree {up:.2f} s (manifest last)   "
                f"download {down:.2f} s   cached {again:.2f} s"
            )
        finally:
            subprocess.run(
                [str(ROOT / "hack" / "s3.sh"), "down", str(work / "server")], check=False
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
