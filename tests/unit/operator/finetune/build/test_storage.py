"""s3:// in a FineTuneJob: the pod's AWS_* environment and cache volume, validation, status."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api.errors import ConfigError
from kubetune_api.finetune_crd import finetunejob_crd
from kubetune_api.termination import TerminationReason
from kubetune_operator.finetune.attempts import succeeded_output
from kubetune_operator.finetune.build.config import build_trainer_config
from kubetune_operator.finetune.build.job import build_job
from kubetune_operator.finetune.validation import parse_spec
from kubetune_operator.names import Run
from kubetune_operator.owner import Owner
from kubetune_operator.settings import Settings

OWNER = Owner("team-a", "faq", "0b5e6c1e-uid")
S3_SPEC: dict[str, Any] = {
    "model": {"name": "Qwen/Qwen3-0.6B", "source": {"uri": "s3://models/qwen3-0.6b/"}},
    "dataset": {
        "train": {"uri": "s3://data/faq/train.jsonl"},
        "eval": {"pvc": {"claimName": "data", "path": "faq/eval.jsonl"}},
    },
    "resources": {"gpusPerNode": 1},
    "output": {"uri": "s3://runs/faq"},
    "storage": {
        "endpoint": "http://minio.storage:9000/",
        "region": "eu-west-1",
        "credentialsSecretRef": {"name": "s3-creds"},
        "cacheSize": "30Gi",
    },
}


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    job = build_job(OWNER, parse_spec(spec), Run(1), Settings())
    return job["spec"]["template"]["spec"]


def env_of(p: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in p["containers"][0]["env"]}


def test_s3_job_gets_aws_env_by_secret_reference_and_a_cache_volume() -> None:
    p = pod(S3_SPEC)
    env = env_of(p)
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.storage:9000"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert env["KUBETUNE_STORAGE_CACHE"] == "/mnt/cache"
    assert {"name": "cache", "emptyDir": {"sizeLimit": "30Gi"}} in p["volumes"]
    assert {"name": "cache", "mountPath": "/mnt/cache"} in p["containers"][0]["volumeMounts"]
    assert {"name": "output", "emptyDir": {}} in p["volumes"]  # the local side of the mirror


def test_without_a_secret_the_pod_uses_its_own_identity_and_a_cache_claim() -> None:
    spec = {**S3_SPEC, "storage": {"cacheClaimName": "model-cache"}}
    p = pod(spec)
    env = env_of(p)
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_ENDPOINT_URL_S3" not in env
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in p["volumes"]
    assert env["HF_HOME"] == "/mnt/cache/hf"  # on the claim: a restarted pod finds it


def test_a_hub_model_with_a_cache_claim_is_cached_on_it() -> None:
    """No s3:// anywhere, but a cache claim: the Hugging Face cache goes on it (mounted), so
    the hub model is downloaded once, not on every pod start; no AWS_* variables."""
    spec = {
        **S3_SPEC,
        "model": {"name": "Qwen/Qwen3-0.6B"},
        "dataset": {"train": {"pvc": {"claimName": "data", "path": "t.jsonl"}}},
        "output": {"pvc": {"claimName": "out"}},
        "storage": {"cacheClaimName": "hf-cache"},
    }
    p = pod(spec)
    env = env_of(p)
    assert env["HF_HOME"] == "/mnt/cache/hf"
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in p["volumes"]
    assert {"name": "cache", "mountPath": "/mnt/cache"} in p["containers"][0]["volumeMounts"]
    assert not any(k.startswith("AWS_") for k in env)


def test_a_pvc_only_job_gets_no_storage_env() -> None:
    spec = {
        **S3_SPEC,
        "model": {"name": "Qwen/Qwen3-0.6B"},
        "output": {"pvc": {"claimName": "out"}},
    }
    spec["dataset"] = {"train": {"pvc": {"claimName": "data", "path": "t.jsonl"}}}
    p = pod(spec)
    assert not any(k.startswith("AWS_") or k == "KUBETUNE_STORAGE_CACHE" for k in env_of(p))
    assert env_of(p)["HF_HOME"] == "/tmp/hf"  # no claim: the pod's own scratch
    assert not any(v["name"] == "cache" for v in p["volumes"])
    assert all(v["name"] != "cache" for v in p["volumes"])


def test_trainer_config_keeps_the_uris_for_the_trainer_to_download() -> None:
    cfg = build_trainer_config(parse_spec(S3_SPEC), "faq")
    assert cfg.model.source is not None and cfg.model.source.uri == "s3://models/qwen3-0.6b/"
    assert cfg.dataset.train is not None and cfg.dataset.train.uri == "s3://data/faq/train.jsonl"
    assert cfg.output.uri == "s3://runs/faq" and cfg.output.path == "/mnt/output"


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (
            "output",
            {"uri": "gs://runs/faq"},
            "spec.output.uri: only file:// (a local path) and s3://",
        ),
        (
            "output",
            {"uri": "file:///tmp/out"},
            "spec.output.uri: a file:// folder does not outlive",
        ),
        (
            "dataset",
            {"train": {"uri": "file:///data/t.jsonl"}},
            "spec.dataset.train.uri: a file:// path",
        ),
        ("dataset", {"train": {"uri": "s3://x/t.jsonl"}}, "spec.dataset.train.uri: only file://"),
        ("storage", {"endpoint": "minio:9000"}, "spec.storage.endpoint"),
        (
            "storage",
            {"credentialsSecretRef": {"name": "Bad Name"}},
            "spec.storage.credentialsSecretRef.name",
        ),
    ],
)
def test_what_the_runtime_cannot_open_is_refused_naming_the_field(
    path: str, value: Any, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec({**S3_SPEC, path: value})
    assert any(needle in p for p in err.value.problems), err.value.problems


def test_the_preflight_knows_the_cache_size() -> None:
    spec = {
        **S3_SPEC,
        "model": {"name": "Qwen/Qwen3-8B", "source": {"uri": "s3://models/qwen3-8b/"}},
    }
    spec["storage"] = {"cacheSize": "10Gi"}
    with pytest.raises(ConfigError) as err:
        parse_spec(spec)
    assert err.value.problems == [
        "spec.storage.cacheSize: 10Gi cannot hold the base model Qwen/Qwen3-8B downloaded from "
        "s3://models/qwen3-8b/ (about 15.3 GiB in bf16); raise it"
    ]
    spec["storage"] = {"cacheSize": "40Gi"}
    parse_spec(spec)


def test_the_crd_refuses_other_schemes_with_cel_on_every_uri() -> None:
    crd = finetunejob_crd()
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]
    for uri in (
        props["output"]["properties"]["uri"],
        props["dataset"]["properties"]["train"]["properties"]["uri"],
        props["model"]["properties"]["source"]["properties"]["uri"],
    ):
        rules = uri["x-kubernetes-validations"]
        assert rules[0]["rule"].startswith("self.startsWith('file://') || self.matches('^s3://")


def _ctx(pods: list[dict[str, Any]]) -> Any:
    class Observed:
        def __init__(self) -> None:
            self.pods = pods

    class Ctx:
        spec = parse_spec(S3_SPEC)
        owner = OWNER
        observed = Observed()

    return Ctx()


def test_status_output_names_the_uploaded_adapter_with_size_and_hash() -> None:
    line = TerminationReason(
        "Succeeded", "adapter at s3://runs/faq/adapter", 0, step=40,
        adapterUri="s3://runs/faq/adapter", adapterBytes=123456, adapterSha256="ab" * 32,
    ).to_json()  # fmt: skip
    pods = [
        {
            "attempt": 1,
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {"message": line}}}],
        }
    ]
    out = succeeded_output(_ctx(pods), 1, 40)
    assert out.adapter_path == "s3://runs/faq/adapter"
    assert (out.adapter_bytes, out.adapter_sha256, out.checkpoint_step) == (123456, "ab" * 32, 40)


def test_a_modeldeployment_serving_from_s3_gets_the_env_and_a_cache() -> None:
    from kubetune_operator.serving.adapters import resolve
    from kubetune_operator.serving.builders import MdepOwner, build_server_deployment
    from kubetune_operator.serving.plan import parse_spec as parse_mdep

    spec = parse_mdep(
        {
            "models": [
                {
                    "name": "small",
                    "model": "s3://models/qwen3-0.6b/",
                    "adapter": {"uri": "s3://runs/faq/adapter"},
                }
            ],
            "storage": {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "s3"}},
        }
    )
    files = resolve(spec.models[0], {})
    assert not isinstance(files, type(None))
    dep = build_server_deployment(
        MdepOwner("ns", "chat", "uid"), spec, spec.models[0], files, Settings()
    )
    pod_spec = dep["spec"]["template"]["spec"]
    env = env_of(pod_spec)
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "s3"
    assert {"name": "cache", "emptyDir": {"sizeLimit": "50Gi"}} in pod_spec["volumes"]
    args = pod_spec["containers"][0]["args"]
    assert "s3://models/qwen3-0.6b/" in args and "s3://runs/faq/adapter" in args


def test_a_server_with_a_cache_claim_keeps_the_hub_cache_there() -> None:
    from kubetune_operator.serving.adapters import resolve
    from kubetune_operator.serving.builders import MdepOwner, build_server_deployment
    from kubetune_operator.serving.plan import parse_spec as parse_mdep

    spec = parse_mdep(
        {
            "models": [{"name": "small", "model": "Qwen/Qwen3-0.6B"}],
            "storage": {"cacheClaimName": "hf-cache"},
        }
    )
    files = resolve(spec.models[0], {})
    assert not isinstance(files, type(None))
    dep = build_server_deployment(
        MdepOwner("ns", "chat", "uid"), spec, spec.models[0], files, Settings()
    )
    pod_spec = dep["spec"]["template"]["spec"]
    assert env_of(pod_spec)["HF_HOME"] == "/mnt/cache/hf"
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in pod_spec[
        "volumes"
    ]
