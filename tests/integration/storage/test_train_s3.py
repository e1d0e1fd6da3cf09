"""`kubetune train` with s3:// data, base model and output, then `kubetune serve` of the result.

The tiny random-weight Qwen3 and its JSONL data are uploaded to a fresh bucket on the real
versitygw; the trainer downloads them into its cache, trains on the CPU, and leaves at the
output URI run.json, summary.json, the adapter and its newest checkpoints, each folder with its
MANIFEST.json. The `Succeeded` termination line names the adapter's URI, size and content hash,
equal to the uploaded manifest's. `kubetune serve` then loads base and adapter from s3:// and
answers over HTTP. Wrong credentials, a missing bucket and a missing key end the run with exit
code 1 and one sentence in the termination line.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from s3_train import config, jsonl, train

from kubetune_server.process import KubetuneProcess

pytestmark = pytest.mark.integration


def _inputs(s3, tiny_model_dir: Path) -> tuple[dict, dict]:
    model_uri = s3.put_tree(tiny_model_dir, "models/tiny-qwen3")
    s3.client.put_object(Bucket=s3.name, Key="data/train.jsonl", Body=jsonl(12, 1))
    s3.client.put_object(Bucket=s3.name, Key="data/eval.jsonl", Body=jsonl(4, 2))
    model = {"name": "tiny-qwen3", "source": {"uri": model_uri + "/"}}
    data = {
        "train": {"uri": s3.uri("data/train.jsonl")},
        "eval": {"uri": s3.uri("data/eval.jsonl")},
    }
    return model, data


def test_train_from_and_to_s3_then_serve_the_adapter(
    s3, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model, data = _inputs(s3, tiny_model_dir)
    out = s3.uri("runs/faq")
    proc, line = train(tmp_path / "train", config(model, data, {"uri": out}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = s3.keys("runs/faq/")
    for key in ("run.json", "summary.json", "adapter/MANIFEST.json", "adapter/adapter_config.json"):
        assert f"runs/faq/{key}" in keys, keys
    complete = sorted(
        {k.split("/")[3] for k in keys if k.endswith("MANIFEST.json") and "/checkpoints/" in k}
    )
    assert complete == ["step-000004", "step-000006"]  # the newest two are kept
    manifest = json.loads(
        s3.client.get_object(Bucket=s3.name, Key="runs/faq/adapter/MANIFEST.json")["Body"].read()
    )
    assert line["reason"] == "Succeeded"
    assert line["adapterUri"] == f"{out}/adapter"
    assert line["adapterBytes"] == manifest["bytes"] > 0
    assert line["adapterSha256"] == manifest["sha256"]
    summary = json.loads(
        s3.client.get_object(Bucket=s3.name, Key="runs/faq/summary.json")["Body"].read()
    )
    assert summary["adapter_path"] == f"{out}/adapter" and summary["steps"] == 6
    assert summary["config"]["dataset"]["train"] == {"uri": s3.uri("data/train.jsonl")}
    assert "downloaded" in proc.stderr and "checkpoint_uploaded" in proc.stderr

    server = KubetuneProcess(
        "serve",
        ["--model", model["source"]["uri"], "--adapter", line["adapterUri"], "--quantization",
         "none", "--max-new-tokens", "8", "--max-model-len", "128", "--threads", "1"],
        env={"KUBETUNE_STORAGE_CACHE": str(tmp_path / "server-cache")},
        ready_s=600,  # the 2-core CI machine, loaded: loading alone took a minute
    )  # fmt: skip
    server.launch()
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            models = client.get("/v1/models").json()
            assert [m["id"] for m in models["data"]] == ["adapter"]
            reply = client.post("/v1/completions", json={"prompt": "User: fee?", "max_tokens": 4})
            assert reply.status_code == 200 and reply.json()["choices"][0]["text"] is not None
    finally:
        server.stop()
    assert (
        tmp_path / "server-cache" / s3.name / "runs" / "faq" / "adapter" / "adapter_config.json"
    ).exists()


@pytest.mark.parametrize("fault", ["credentials", "bucket", "key"])
def test_storage_faults_end_the_run_with_one_sentence(
    s3, tiny_model_dir: Path, tmp_path: Path, fault: str
) -> None:
    model, data = _inputs(s3, tiny_model_dir)
    out = {"uri": s3.uri("runs/faulty")}
    env: dict[str, str] = {}
    if fault == "credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong"
        expected = "refused the credentials (SignatureDoesNotMatch); check AWS_ACCESS_KEY_ID"
    elif fault == "bucket":
        out = {"uri": "s3://no-such-bucket-kt/runs/faulty"}
        expected = "s3://no-such-bucket-kt/runs/faulty/run.json: bucket 'no-such-bucket-kt' does not exist at"
    else:
        data["train"] = {"uri": s3.uri("data/absent.jsonl")}
        expected = f"{s3.uri('data/absent.jsonl')}: no object or folder there"
    proc, line = train(tmp_path / "train", config(model, data, out), **env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert line["reason"] == "Error" and "\n" not in line["message"]
    assert line["message"].startswith("object storage: s3://"), line["message"]
    assert expected in line["message"], line["message"]
    assert "Traceback" not in proc.stderr
