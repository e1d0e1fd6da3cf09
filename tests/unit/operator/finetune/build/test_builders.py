"""Pure builders of a FineTuneJob's children: deterministic, and the contents that matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.status import Attempt
from kubetune_operator import names
from kubetune_operator.finetune.build.children import build_children, build_trial_children
from kubetune_operator.finetune.build.config import build_config_map, build_trainer_config
from kubetune_operator.finetune.build.job import build_job, trainer_args
from kubetune_operator.finetune.build.rbac import build_role, build_role_binding
from kubetune_operator.finetune.validation import parse_spec
from kubetune_operator.owner import Owner
from kubetune_operator.settings import Settings

EXAMPLES = sorted((Path(__file__).parents[5] / "manifests" / "examples").glob("finetunejob-*.yaml"))
OWNER = Owner("team-a", "faq", "0b5e6c1e-uid")


def spec_of(**overrides: Any) -> FineTuneJobSpec:
    raw: dict[str, Any] = {
        "model": {
            "name": "Qwen/Qwen3-8B",
            "source": {"pvc": {"claimName": "models", "path": "qwen3-8b"}},
        },
        "dataset": {
            "train": {"pvc": {"claimName": "data", "path": "faq/train.jsonl"}},
            "eval": {"configMap": {"name": "faq-eval", "key": "eval.jsonl"}},
        },
        "training": {"microBatchSize": 4, "gradientAccumulationSteps": 2},
        "resources": {"gpusPerNode": 2},
        "output": {"pvc": {"claimName": "out", "path": "runs/faq"}},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_spec(raw)


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


def test_building_twice_gives_equal_objects() -> None:
    attempt = Attempt(index=1, job_name="faq-a1", changes={"microBatchSize": "2"})
    first = build_children(OWNER, spec_of(), attempt, Settings())
    second = build_children(OWNER, spec_of(), attempt, Settings())
    assert first == second
    assert yaml.safe_dump_all(first) == yaml.safe_dump_all(second)
    assert [o["kind"] for o in first] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Job",
    ]


def test_every_child_is_owned_and_labelled() -> None:
    attempt = Attempt(index=0, job_name="faq-a0")
    for obj in build_children(OWNER, spec_of(resources={"nodes": 2}), attempt, Settings()):
        meta = obj["metadata"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "name": "faq",
                "uid": "0b5e6c1e-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"][names.LABEL_FTJ] == "faq"
        assert meta["annotations"][names.ANNOTATION_FTJ] == "faq"
        assert meta["namespace"] == "team-a"


def test_job_requests_gpus_and_runs_torchrun_non_root() -> None:
    job = build_job(OWNER, spec_of(), names.Run(3), Settings(trainer_image="trainer:1"))
    assert job["metadata"]["name"] == "faq-a3"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["completionMode"] == "NonIndexed"
    c = container(job)
    assert c["image"] == "trainer:1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert c["command"] == ["torchrun"]
    assert c["args"] == [
        "--standalone",
        "--nproc_per_node=2",
        "--shutdown_timeout=110",  # the 120 s grace period less torchrun's own margin
        "--no-python",
        "kubetune", "train", "--config", "/etc/kubetune/config.yaml", "--resume", "auto", "--no-progress",
    ]  # fmt: skip
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["terminationMessagePath"] == "/dev/termination-log"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "faq-trainer"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert env(job)["KUBETUNE_FINETUNEJOB"] == "team-a/faq"


def test_job_placement_and_extra_resources_come_from_the_spec() -> None:
    spec = spec_of(
        resources={
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
            ],
            "resources": {"requests": {"cpu": 8, "memory": "64Gi"}, "limits": {"memory": "80Gi"}},
            "image": "custom:2",
        }
    )
    job = build_job(OWNER, spec, names.Run(0), Settings())
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"][0] == {
        "key": "dedicated",
        "operator": "Equal",
        "value": "ml",
        "effect": "NoSchedule",
    }
    assert container(job)["resources"] == {
        "requests": {"cpu": 8, "memory": "64Gi", "nvidia.com/gpu": 2},
        "limits": {"memory": "80Gi", "nvidia.com/gpu": 2},
    }
    assert container(job)["image"] == "custom:2"


def test_cpu_only_job_has_no_gpu_request_or_toleration() -> None:
    job = build_job(OWNER, spec_of(resources={"gpusPerNode": 0}), names.Run(0), Settings())
    assert "nvidia.com/gpu" not in str(container(job)["resources"])
    assert "tolerations" not in job["spec"]["template"]["spec"]
    assert "--nproc_per_node=1" in container(job)["args"]


def test_multi_node_is_an_indexed_job_with_rendezvous_env() -> None:
    spec = spec_of(resources={"nodes": 3, "gpusPerNode": 8})
    job = build_job(OWNER, spec, names.Run(1), Settings())
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["template"]["spec"]["subdomain"] == "faq"
    e = env(job)
    assert e["MASTER_ADDR"] == "faq-a1-0.faq"
    assert e["NODE_RANK"] == {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    args = trainer_args(spec, Settings())
    assert args[:6] == [
        "--nnodes=3",
        "--nproc_per_node=8",
        "--shutdown_timeout=110",
        "--node_rank=$(NODE_RANK)",
        "--master_addr=$(MASTER_ADDR)",
        "--master_port=29500",
    ]
    children = build_children(OWNER, spec, Attempt(index=1, job_name="faq-a1"), Settings())
    service = next(c for c in children if c["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {names.LABEL_FTJ: "faq"}


def test_role_lets_the_trainer_patch_only_its_own_status() -> None:
    role = build_role(OWNER)
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.io"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["faq"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = build_role_binding(OWNER)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "faq-trainer", "namespace": "team-a"}
    ]


def test_config_points_at_mounted_paths_and_carries_overrides() -> None:
    spec = spec_of()
    cm = build_config_map(
        OWNER, spec, names.Run(2), {"microBatchSize": "2", "gradientAccumulationSteps": "4"}
    )
    assert cm["metadata"]["name"] == "faq-a2"
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["model"] == {"name": "/mnt/pvc/models/qwen3-8b"}
    assert config["dataset"]["train"] == {"path": "/mnt/pvc/data/faq/train.jsonl"}
    assert config["dataset"]["eval"] == {"path": "/mnt/configmaps/faq-eval/eval.jsonl"}
    assert config["output"] == {"path": "/mnt/pvc/out/runs/faq"}
    assert config["training"]["microBatchSize"] == 2
    assert config["training"]["gradientAccumulationSteps"] == 4
    assert "resources" not in config and "retry" not in config


def test_mounts_match_the_config_paths() -> None:
    job = build_job(OWNER, spec_of(), names.Run(0), Settings())
    mounts = {m["mountPath"]: m for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert mounts["/mnt/pvc/out"].get("readOnly") is False
    assert mounts["/mnt/pvc/data"]["readOnly"] is True
    assert volumes[mounts["/mnt/pvc/data"]["name"]]["persistentVolumeClaim"]["claimName"] == "data"
    cm_volume = volumes[mounts["/mnt/configmaps/faq-eval"]["name"]]["configMap"]
    assert cm_volume == {"name": "faq-eval", "items": [{"key": "eval.jsonl", "path": "eval.jsonl"}]}
    assert volumes["config"]["configMap"]["name"] == "faq-a0"


def test_output_without_a_path_uses_the_job_name() -> None:
    config = build_trainer_config(spec_of(output={"pvc": {"claimName": "out"}}), "faq")
    assert config.output.path == "/mnt/pvc/out/faq"


@pytest.mark.parametrize(
    ("name", "attempt", "expected"),
    [("faq", 0, "faq-a0"), ("my.job", 1, None), ("x" * 80, 12, None)],
)
def test_job_names_are_valid_and_deterministic(
    name: str, attempt: int, expected: str | None
) -> None:
    job = names.job_name(name, attempt)
    assert job == names.job_name(name, attempt)
    assert len(job) <= names.JOB_NAME_LIMIT and job.endswith(f"-a{attempt}")
    assert all(ch.isalnum() or ch == "-" for ch in job)
    if expected:
        assert job == expected
    assert names.job_name("x" * 80, 1) != names.job_name("x" * 79 + "y", 1)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses_and_builds(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert manifest["kind"] == "FineTuneJob"
    spec = parse_spec(manifest["spec"])
    owner = Owner("default", manifest["metadata"]["name"], "uid")
    if spec.search is None:
        children = build_children(owner, spec, Attempt(index=0, job_name="x"), Settings())
    else:
        params = {"learning_rate": 1e-4, "rank": 8}
        children = build_trial_children(owner, spec, 0, params, Settings())
    assert children[-1]["kind"] == "Job"
    assert len(EXAMPLES) >= 6
