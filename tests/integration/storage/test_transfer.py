"""`kubetune_trainer.storage` against a real S3 server (versitygw from `hack/s3.sh`).

Folder uploads write MANIFEST.json last and a folder without one is not complete; downloads
land in the cache and are skipped when the cache holds the same objects; a 70 MiB file goes up
and down multipart intact; wrong credentials, a missing bucket and a missing key each fail with
one sentence that names the URI and what to check; an upload to a server that went away is
retried with backoff and then fails naming the attempts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kubetune_trainer.storage import StorageError
from kubetune_trainer.storage.mirror import with_retries
from kubetune_trainer.storage.transfer import (
    MANIFEST,
    build_manifest,
    download,
    read_manifest,
    upload_file,
    upload_tree,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha", encoding="utf-8")
    (root / "sub" / "b.bin").write_bytes(os.urandom(1000))
    return root


def test_upload_tree_writes_the_manifest_last_and_download_restores_it(s3, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    order: list[str] = []
    manifest = upload_tree(src, s3.uri("run/adapter"), on_file=order.append)
    assert order == ["a.txt", "sub/b.bin"]
    assert s3.keys("run/") == [
        "run/adapter/MANIFEST.json",
        "run/adapter/a.txt",
        "run/adapter/sub/b.bin",
    ]
    assert read_manifest(s3.uri("run/adapter")) == manifest
    assert manifest["bytes"] == 1005 and manifest["sha256"] == build_manifest(src)["sha256"]
    got = download(s3.uri("run/adapter/"))
    assert (got / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert build_manifest(got)["sha256"] == manifest["sha256"]  # MANIFEST.json is left out
    assert (got / MANIFEST).exists()


def test_a_folder_without_its_manifest_is_not_complete(s3, tmp_path: Path) -> None:
    upload_file(_tree(tmp_path / "src") / "a.txt", s3.uri("ckpt/step-000002/a.txt"))
    assert read_manifest(s3.uri("ckpt/step-000002")) is None


def test_the_cache_skips_what_it_holds_and_refetches_what_changed(s3, tmp_path: Path) -> None:
    s3.client.put_object(Bucket=s3.name, Key="data/train.jsonl", Body=b'{"input": "a"}\n')
    path = download(s3.uri("data/train.jsonl"))
    assert path.read_bytes() == b'{"input": "a"}\n'
    mtime = path.stat().st_mtime_ns
    assert download(s3.uri("data/train.jsonl")).stat().st_mtime_ns == mtime  # cached
    s3.client.put_object(Bucket=s3.name, Key="data/train.jsonl", Body=b'{"input": "b"}\n')
    assert download(s3.uri("data/train.jsonl")).read_bytes() == b'{"input": "b"}\n'


def test_a_large_file_goes_up_and_down_multipart_intact(s3, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(70):
            f.write(os.urandom(1024 * 1024))
    upload_file(big, s3.uri("big/big.bin"))
    head = s3.client.head_object(Bucket=s3.name, Key="big/big.bin")
    assert head["ContentLength"] == big.stat().st_size
    assert "-" in head["ETag"]  # a multipart upload's ETag: <md5 of parts>-<part count>
    got = download(s3.uri("big/big.bin"), tmp_path / "back.bin")
    assert (
        build_manifest(tmp_path)["files"]["back.bin"]["sha256"]
        == (build_manifest(tmp_path)["files"]["big.bin"]["sha256"])
    )
    assert got.stat().st_size == big.stat().st_size


def test_wrong_credentials_fail_with_one_sentence(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError) as err:
        download(s3.uri("data/train.jsonl"))
    text = str(err.value)
    assert text.startswith(f"{s3.uri('data/train.jsonl')}: ") and "\n" not in text
    assert "refused the credentials (SignatureDoesNotMatch)" in text
    assert "AWS_SECRET_ACCESS_KEY" in text and "credentialsSecretRef" in text


def test_a_missing_bucket_and_a_missing_key_fail_with_one_sentence(s3) -> None:
    with pytest.raises(StorageError) as err:
        download("s3://no-such-bucket-here/data/train.jsonl")
    assert str(err.value) == (
        "s3://no-such-bucket-here/data/train.jsonl: bucket 'no-such-bucket-here' does not exist "
        f"at {s3.server.endpoint}"
    )
    with pytest.raises(StorageError) as err:
        download(s3.uri("data/missing.jsonl"))
    assert str(err.value) == (
        f"{s3.uri('data/missing.jsonl')}: no object or folder there "
        f"(bucket {s3.name!r} has no key 'data/missing.jsonl')"
    )


def test_an_unreachable_server_is_retried_with_backoff_then_fails(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, port = tmp_path / "gone", s3.server.port + 50
    subprocess.run([str(ROOT / "hack" / "s3.sh"), "up", str(state), str(port)], check=True)
    subprocess.run([str(ROOT / "hack" / "s3.sh"), "down", str(state)], check=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("KUBETUNE_UPLOAD_ATTEMPTS", "3")
    monkeypatch.setenv("KUBETUNE_UPLOAD_BACKOFF", "0.1")
    src = _tree(tmp_path / "src")
    with pytest.raises(StorageError) as err:
        with_retries("upload of checkpoint step-000002", lambda: upload_tree(src, s3.uri("x")))
    text = str(err.value)
    assert text.startswith("upload of checkpoint step-000002 failed after 3 attempts: s3://")
    assert f"cannot reach http://127.0.0.1:{port}" in text
