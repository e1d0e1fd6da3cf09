"""Named adapters of a ModelDeployment: the ConfigMap, no rollout on change, promotion, status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune_api.deployment import AdapterStatus, ModelDeploymentStatus
from kubetune_api.errors import ConfigError
from kubetune_operator.serving.builders import MdepOwner
from kubetune_operator.serving.plan import build_children, parse_spec
from kubetune_operator.serving.status import ModelState, adapter_events, derive_status
from kubetune_operator.settings import Settings
from kubetune_server.adapter_config import parse_adapter_config
from kubetune_server.cli import build_parser as serve_parser
from kubetune_server.cli import settings_from_args
from kubetune_server.router_cli import build_parser as route_parser
from kubetune_server.router_cli import parse_adapter_backends

from .test_builders import example

OWNER = MdepOwner("team-a", "support", "uid-1")
SETTINGS = Settings(trainer_image="kubetune-runtime:test")
Json = dict[str, Any]


def run(when: str, loss: float | None, path: str = "pvc://kubetune-output/faq/adapter") -> Json:
    status: Json = {"phase": "Succeeded", "output": {"adapterPath": path}, "completionTime": when}
    if loss is not None:
        status["metrics"] = {"evalLoss": loss}
    return {"status": status}


def build(
    raw: Json, jobs: dict[str, Json | None], served: ModelDeploymentStatus | None = None
) -> tuple[dict[tuple[str, str], Json], list[ModelState]]:
    built = build_children(OWNER, parse_spec(raw["spec"]), jobs, SETTINGS, served)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in built.apply}
    return by_name, built.models


def adapters_of(models: list[ModelState]) -> list[AdapterStatus]:
    assert models[0].adapters is not None
    return models[0].adapters


def served_status(models: list[ModelState]) -> ModelDeploymentStatus:
    from datetime import UTC, datetime

    return derive_status(ModelDeploymentStatus(), models, None, "e", 1, datetime.now(UTC))


def folders(objs: dict[tuple[str, str], Json]) -> dict[str, str]:
    cm = objs[("ConfigMap", "support-base-adapters")]
    return dict(json.loads(cm["data"]["adapters.json"]))


def test_adapters_go_to_a_configmap_the_servers_watch() -> None:
    objs, models = build(example("multi-lora"), {"credit-card-faq": run("t1", 1.30)})
    assert folders(objs) == {
        "faq": "/mnt/pvc/kubetune-output/faq/adapter",
        "legal": "/mnt/pvc/kubetune-output/legal-v3/adapter",
    }
    pod = objs[("Deployment", "support-base")]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    parsed = settings_from_args(serve_parser().parse_args(args[1:]))
    assert str(parsed.adapter_config) == "/etc/kubetune/adapters/adapters.json"
    assert parsed.max_body_bytes == 4194304 and parsed.max_prompt_chars == 200000
    assert parsed.multi_lora and parsed.adapter is None
    assert {"name": "adapters", "configMap": {"name": "support-base-adapters"}} in pod["volumes"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["kubetune-models", "kubetune-output"]
    cm_text = objs[("ConfigMap", "support-base-adapters")]["data"]["adapters.json"]
    assert parse_adapter_config(cm_text, "cm") == folders(objs)  # the server reads what we write
    assert [(a.name, a.state) for a in adapters_of(models)] == [
        ("faq", "Configured"),
        ("legal", "Configured"),
    ]


def test_changing_an_adapter_changes_the_configmap_and_never_the_pod_template() -> None:
    raw = example("multi-lora")
    before, _ = build(raw, {"credit-card-faq": run("t1", 1.30)})
    raw["spec"]["models"][0]["adapters"][1]["pvc"]["path"] = "legal-v4/adapter"
    raw["spec"]["models"][0]["adapters"].append(
        {"name": "hr", "path": "/mnt/pvc/kubetune-output/hr"}
    )
    after, _ = build(raw, {"credit-card-faq": run("t2", 1.20)})
    template = lambda objs: objs[("Deployment", "support-base")]["spec"]["template"]  # noqa: E731
    assert template(before) == template(after)
    assert folders(after)["legal"].endswith("legal-v4/adapter") and "hr" in folders(after)


def test_a_worse_run_is_not_promoted_and_the_old_one_keeps_serving() -> None:
    raw = example("multi-lora")
    raw["spec"]["models"][0]["adapters"][0]["fineTuneJob"] = "faq-run"
    first_path = "pvc://kubetune-output/faq-1/adapter"
    objs, models = build(raw, {"faq-run": run("t1", 1.30, first_path)})
    served = served_status(models)
    worse = run("t2", 1.40, "pvc://kubetune-output/faq-2/adapter")
    objs, models = build(raw, {"faq-run": worse}, served)
    assert folders(objs)["faq"] == "/mnt/pvc/kubetune-output/faq-1/adapter"
    faq = adapters_of(models)[0]
    assert (faq.state, faq.revision, faq.eval_loss) == ("Configured", "t1", 1.30)
    assert faq.reason is not None and "not promoted" in faq.reason and "1.4" in faq.reason
    held = served_status(models)
    events = adapter_events(served, held)
    assert [(e.type, e.reason) for e in events] == [("Warning", "PromotionRefused")]
    assert adapter_events(held, held) == []  # said once
    better = run("t3", 1.31, "pvc://kubetune-output/faq-3/adapter")  # within maxRegression 0.02
    objs, models = build(raw, {"faq-run": better}, held)
    assert folders(objs)["faq"] == "/mnt/pvc/kubetune-output/faq-3/adapter"
    events = adapter_events(held, served_status(models))
    assert [(e.type, e.reason) for e in events] == [("Normal", "AdapterPromoted")]


def test_without_promotion_every_new_run_is_served() -> None:
    raw = example("multi-lora")
    del raw["spec"]["models"][0]["adapters"][0]["promotion"]
    _, models = build(raw, {"credit-card-faq": run("t1", 1.0, "pvc://kubetune-output/a/adapter")})
    objs, _ = build(raw, {"credit-card-faq": run("t2", 9.0, "pvc://kubetune-output/b/adapter")},
                    served_status(models))  # fmt: skip
    assert folders(objs)["faq"].endswith("/b/adapter")


def test_a_failed_job_is_failed_with_its_message_and_a_running_one_keeps_the_old_run() -> None:
    raw = example("multi-lora")
    failed = {"status": {"phase": "Failed", "message": "OutOfMemory on attempt 3"}}
    objs, models = build(raw, {"credit-card-faq": failed})
    faq = adapters_of(models)[0]
    assert faq.state == "Failed" and "OutOfMemory on attempt 3" in (faq.reason or "")
    assert "faq" not in folders(objs) and "legal" in folders(objs)  # the others still serve
    status = served_status(models)
    assert status.phase == "Degraded" and "adapter faq" in (status.message or "")
    events = adapter_events(ModelDeploymentStatus(), status)
    assert [(e.type, e.reason) for e in events] == [("Warning", "AdapterFailed")]
    _, models = build(raw, {"credit-card-faq": run("t1", 1.3)})
    running = {"status": {"phase": "Running"}}
    objs, models = build(raw, {"credit-card-faq": running}, served_status(models))
    assert folders(objs)["faq"] == "/mnt/pvc/kubetune-output/faq/adapter"
    assert "Running" in (adapters_of(models)[0].reason or "")
    pending, models = build(raw, {"credit-card-faq": None})
    assert adapters_of(models)[0].state == "Pending" and "faq" not in folders(pending)


def test_the_router_sends_each_adapter_to_its_model() -> None:
    raw = example("vllm")
    objs, _ = build(raw, {"credit-card-faq": run("t1", 1.3)})
    args = objs[("Deployment", "support-router")]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    parsed = route_parser("kubetune route").parse_args(args[1:])
    assert parse_adapter_backends(parsed.adapter) == {"faq": "large"}
    assert "--max-body-bytes" in args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(adapter={"path": "/x"}), "not both"),
        (lambda m: m["adapters"].append({"name": "faq", "path": "/x"}), "unique"),
        (lambda m: m["adapters"][1].update(promotion={"maxRegression": 0.1}), "needs fineTuneJob"),
        (lambda m: m["adapters"].append({"name": "bad/name", "path": "/x"}), "pattern"),
        (lambda m: m.update(runtime="vllm", gpus=0), "gpus >= 1"),
        (lambda m: m.update(vllm={"maxLoras": 2}), "runtime: vllm"),
    ],
)
def test_bad_adapter_specs_name_the_field(change: Any, message: str) -> None:
    raw = example("multi-lora")
    change(raw["spec"]["models"][0])
    with pytest.raises(ConfigError) as err:
        parse_spec(raw["spec"])
    assert "spec.models.0" in str(err.value) and message in str(err.value), err.value
