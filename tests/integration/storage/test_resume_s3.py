"""A trainer killed in the middle of a checkpoint upload resumes from the last complete one.

The run trains a two-task mixture read from s3:// and writes to an s3:// output, with every
uploaded file slowed (`KUBETUNE_TEST_UPLOAD_DELAY`) so the test can SIGKILL it once step 2's
checkpoint is complete at the URI and step 4's is half uploaded (files there, no MANIFEST.json).
A second start in a fresh local folder, as a new pod would be, with the same run id
(`KUBETUNE_RUN_ID`), lists the run's checkpoints at the URI, restores step 2 (never the
incomplete step 4), finishes, and leaves only complete checkpoints (the newest two) there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from s3_train import child_env, config, jsonl, train, train_argv

pytestmark = pytest.mark.integration
RUN_ID = "8f1c2b0e-5a4d-4d7e-9a43-s3-resume"


def _events(proc: subprocess.Popen[str], seen: list[dict], stop: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{"):
            try:
                seen.append(json.loads(line))
            except ValueError:
                continue
        if stop.is_set():
            break


def _wait(seen: list[dict], what, timeout: float, proc: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next((e for e in list(seen) if what(e)), None)
        if found is not None:
            return found
        assert proc.poll() is None, f"trainer exited early ({proc.returncode}): {seen[-5:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out; last events: {seen[-5:]}")


def test_killed_mid_upload_resumes_from_the_last_complete_checkpoint(
    s3, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_uri = s3.put_tree(tiny_model_dir, "models/tiny-qwen3")
    mixture = []
    for i, task in enumerate(("qa", "chat")):
        s3.client.put_object(Bucket=s3.name, Key=f"data/{task}.jsonl", Body=jsonl(8, 10 + i))
        mixture.append({"name": task, "train": {"uri": s3.uri(f"data/{task}.jsonl")}})
    out = s3.uri("runs/resume")
    model = {"name": "tiny", "source": {"uri": model_uri}}
    first, second_dir = tmp_path / "pod-1", tmp_path / "pod-2"
    first.mkdir()
    # Each "pod" has its own local output folder (the operator's /mnt/output emptyDir).
    cfg = config(model, {"mixture": mixture}, {"path": str(first / "out"), "uri": out})
    (first / "config.yaml").write_text(json.dumps(cfg), encoding="utf-8")
    env = child_env(KUBETUNE_RUN_ID=RUN_ID, KUBETUNE_TEST_UPLOAD_DELAY="1.0")
    proc = subprocess.Popen(
        train_argv(first / "config.yaml", first / "termination-log"),
        cwd=first, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    seen: list[dict] = []
    stop = threading.Event()
    reader = threading.Thread(target=_events, args=(proc, seen, stop), daemon=True)
    reader.start()
    try:
        done = f"{out}/checkpoints/step-000002"
        _wait(
            seen, lambda e: e.get("event") == "checkpoint_uploaded" and e["uri"] == done, 400, proc
        )
        _wait(
            seen,
            lambda e: e.get("event") == "checkpoint_uploading" and e["checkpoint"] == "step-000004",
            120,
            proc,
        )
        deadline = time.monotonic() + 60
        while not s3.keys("runs/resume/checkpoints/step-000004/") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    half = s3.keys("runs/resume/checkpoints/step-000004/")
    assert half and "runs/resume/checkpoints/step-000004/MANIFEST.json" not in half
    assert "runs/resume/checkpoints/step-000002/MANIFEST.json" in s3.keys("runs/resume/")
    assert "runs/resume/adapter/MANIFEST.json" not in s3.keys("runs/resume/")

    cfg["output"]["path"] = str(second_dir / "out")
    second, line = train(second_dir, cfg, KUBETUNE_RUN_ID=RUN_ID)
    assert second.returncode == 0, second.stderr[-3000:]
    restored = [json.loads(x) for x in second.stderr.splitlines() if '"checkpoint_restored"' in x]
    assert [e["uri"] for e in restored] == [f"{out}/checkpoints/step-000002"]
    summary = json.loads(
        s3.client.get_object(Bucket=s3.name, Key="runs/resume/summary.json")["Body"].read()
    )
    assert summary["resumed_from_step"] == 2 and summary["steps"] == line["step"]
    assert summary["run_id"] == RUN_ID
    # Step 4 was uploaded again, whole; the URI keeps the newest two complete checkpoints, and
    # nothing of an incomplete or pruned one is left.
    folders = {k.split("/")[3] for k in s3.keys("runs/resume/checkpoints/")}
    complete = {
        k.split("/")[3] for k in s3.keys("runs/resume/checkpoints/") if k.endswith("MANIFEST.json")
    }
    assert folders == complete and len(complete) == 2, folders
    assert max(complete) == f"step-{line['step']:06d}"
    assert line["reason"] == "Succeeded" and line["adapterUri"] == f"{out}/adapter"
