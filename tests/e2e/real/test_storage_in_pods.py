"""Object storage end to end on the real node: the trainer pod reads its base model and data
from `s3://` and writes the adapter and checkpoints there; a ModelDeployment serves that adapter
from `s3://` (base and adapter downloaded into the server pod's cache) and answers over HTTP.

The S3 server is the cluster's versitygw (`make cluster-up`; with the real node it listens on
the bridge address, so pods reach it). The pods get the endpoint from `spec.storage.endpoint`
and the keys from a Secret by reference (`spec.storage.credentialsSecretRef`); nothing is on a
volume. What is checked in the store: the adapter's files, each checkpoint's manifest (written
last, naming its files) and `summary.json`; in the status: the adapter's s3:// URI, its size and
content hash, which must match the uploaded objects.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from real_helpers import Release, Volumes, ask_in_cluster, ftj_manifest, pod_logs

NAME = "faq-s3"
SECRET = "s3-credentials"
PORT = 8000


@dataclass(frozen=True)
class Store:
    """A bucket on the cluster's S3 server holding the tiny Qwen3 and the faq data."""

    endpoint: str
    bucket: str
    client: Any

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents") or [])

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def put_tree(self, folder: Path, prefix: str) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(folder)}")


@pytest.fixture(scope="module")
def store(cluster: Any, kubectl: Any, release: Release, volumes: Volumes) -> Iterator[Store]:
    import boto3
    from botocore.config import Config

    env = cluster.s3_env()
    assert env.get("AWS_ENDPOINT_URL"), "the cluster has no S3 server (`hack/cluster.sh env`)"
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}),
    )
    s = Store(env["AWS_ENDPOINT_URL"], f"real-{uuid.uuid4().hex[:10]}", client)
    client.create_bucket(Bucket=s.bucket)
    s.put_tree(volumes.path("models") / "tiny-qwen3", "models/tiny-qwen3")
    s.put_tree(volumes.path("data") / "faq", "data/faq")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "stringData": {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }
    kubectl.apply(secret, namespace=release.namespace)
    yield s
    for key in s.keys(""):
        client.delete_object(Bucket=s.bucket, Key=key)
    client.delete_bucket(Bucket=s.bucket)


def storage(store: Store) -> dict[str, Any]:
    return {"endpoint": store.endpoint, "credentialsSecretRef": {"name": SECRET}}


@pytest.fixture(scope="module")
def trained_s3(
    kubectl: Any,
    release: Release,
    reconciler: str,
    store: Store,
    wait_until: Callable[..., Any],
) -> dict[str, Any]:
    ns = release.namespace
    job = ftj_manifest(NAME)
    spec = job["spec"]
    spec["model"]["source"] = {"uri": store.uri("models/tiny-qwen3")}
    spec["dataset"] = {
        "train": {"uri": store.uri("data/faq/train.jsonl")},
        "eval": {"uri": store.uri("data/faq/eval.jsonl")},
    }
    spec["output"] = {"uri": store.uri(f"runs/{NAME}")}
    spec["storage"] = {**storage(store), "cacheSize": "2Gi"}
    kubectl.apply(job, namespace=ns)

    def ended() -> dict[str, Any] | None:
        status = kubectl.json("get", "ftj", NAME, "-n", ns).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = dict(wait_until(ended, timeout=900, what=f"FineTuneJob {NAME} to finish"))
    logs = pod_logs(kubectl, ns, f"job/{NAME}-a0")
    assert status["phase"] == "Succeeded", f"{json.dumps(status)[:3000]}\n{logs[-3000:]}"
    return status


def adapter_hash(store: Store, prefix: str) -> tuple[int, str]:
    """(bytes, sha256 over 'name size sha256' lines) of the objects under prefix but the
    manifest, computed here from what was uploaded (the trainer's rule: `storage.transfer`)."""
    lines, total = "", 0
    for key in store.keys(prefix + "/"):
        name = key.removeprefix(prefix + "/")
        if name == "MANIFEST.json":
            continue
        body = store.read(key)
        total += len(body)
        lines += f"{name} {len(body)} {hashlib.sha256(body).hexdigest()}\n"
    return total, hashlib.sha256(lines.encode()).hexdigest()


def test_trainer_pod_reads_and_writes_object_storage(
    trained_s3: dict[str, Any], store: Store
) -> None:
    output = trained_s3["output"]
    run = f"runs/{NAME}"
    assert output["adapterPath"] == store.uri(f"{run}/adapter"), output
    keys = store.keys(run + "/")
    assert f"{run}/adapter/adapter_config.json" in keys, keys
    assert any(k.startswith(f"{run}/adapter/adapter_model") for k in keys), keys
    assert f"{run}/summary.json" in keys, keys
    checkpoints = f"{run}/checkpoints/"
    manifests = [k for k in keys if k.startswith(checkpoints) and k.endswith("/MANIFEST.json")]
    assert 1 <= len(manifests) <= 2, keys  # saved every 16 of 48 steps; the newest 2 are kept
    for manifest_key in manifests:  # every file a manifest names is there, with its size
        folder = manifest_key.removesuffix("MANIFEST.json")
        named = json.loads(store.read(manifest_key))["files"]
        assert named, manifest_key
        for file, entry in named.items():
            head = store.client.head_object(Bucket=store.bucket, Key=folder + file)
            assert head["ContentLength"] == entry["size"], (folder + file, entry)
    size, digest = adapter_hash(store, f"{run}/adapter")
    assert output["adapterBytes"] == size, (output, size)
    assert output["adapterSha256"] == digest, (output, digest)
    assert trained_s3["metrics"]["evalLoss"] > 0


def test_modeldeployment_serves_the_adapter_from_object_storage(
    kubectl: Any,
    release: Release,
    store: Store,
    trained_s3: dict[str, Any],
    wait_until: Callable[..., Any],
) -> None:
    ns, name = release.namespace, "faq-s3-serve"
    mdep = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "models": [
                {
                    "name": "large",
                    "model": store.uri("models/tiny-qwen3"),
                    "adapter": {"fineTuneJob": NAME},
                    "quantization": "none",
                    "replicas": 1,
                    "gpus": 0,
                }
            ],
            "server": {"maxNewTokens": 8, "port": PORT},
            "storage": {**storage(store), "cacheSize": "2Gi"},
        },
    }
    kubectl.apply(mdep, namespace=ns)

    def available() -> dict[str, Any] | None:
        status = kubectl.json("get", "mdep", name, "-n", ns).get("status") or {}
        return status if status.get("phase") == "Available" else None

    status = wait_until(available, timeout=600, what=f"ModelDeployment {name} Available")
    served = status["models"][0]
    assert served["adapter"] == trained_s3["output"]["adapterPath"], status
    answer = ask_in_cluster(kubectl, ns, "ask-s3-model", status["endpoint"], wait_until)
    assert answer["choices"][0]["message"]["content"] is not None, answer
