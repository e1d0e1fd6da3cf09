"""Pure builders of a ModelDeployment's children: names, probes, security, GPUs, router, adapter."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.errors import ConfigError
from kubetune_operator.serving import names
from kubetune_operator.serving.adapters import Resolved, Waiting, resolve
from kubetune_operator.serving.builders import MdepOwner, endpoint
from kubetune_operator.serving.plan import (
    build_children,
    carry_over,
    parse_spec,
    referenced_jobs,
    wanted_children,
)
from kubetune_operator.settings import Settings
from kubetune_server.cli import build_parser as serve_parser
from kubetune_server.router_cli import build_parser as route_parser

EXAMPLES = Path(__file__).parents[4] / "manifests" / "examples"
OWNER = MdepOwner("team-a", "chat", "7f1c-uid")
SETTINGS = Settings(trainer_image="kubetune-runtime:test")
Json = dict[str, Any]


def example(name: str) -> Json:
    return yaml.safe_load((EXAMPLES / f"modeldeployment-{name}.yaml").read_text())


def succeeded(
    path: str = "pvc://kubetune-output/credit-card-faq/adapter", when: str = "t1"
) -> Json:
    return {
        "status": {"phase": "Succeeded", "output": {"adapterPath": path}, "completionTime": when}
    }


def objects(raw: Json, jobs: dict[str, Json | None] | None = None) -> dict[tuple[str, str], Json]:
    spec = parse_spec(raw["spec"])
    built = build_children(OWNER, spec, jobs or {}, SETTINGS)
    return {(o["kind"], o["metadata"]["name"]): o for o in built.apply}


def container(deployment: Json) -> Json:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_routed_example_builds_servers_services_and_router() -> None:
    built = objects(example("routed"))
    assert sorted(built) == [
        ("Deployment", "chat-large"),
        ("Deployment", "chat-router"),
        ("Deployment", "chat-small"),
        ("Service", "chat-large"),
        ("Service", "chat-router"),
        ("Service", "chat-small"),
    ]
    for obj in built.values():
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref == {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "chat",
            "uid": "7f1c-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_same_spec_same_objects() -> None:
    raw = example("routed")
    assert objects(raw) == objects(copy.deepcopy(raw))
    ftj = example("from-finetunejob")
    jobs: dict[str, Json | None] = {"credit-card-faq": succeeded()}
    assert objects(ftj, jobs) == objects(ftj, copy.deepcopy(jobs))


def test_server_probes_security_and_gpus() -> None:
    deployment = objects(example("routed"))[("Deployment", "chat-large")]
    spec = deployment["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    c = container(deployment)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["memory"] == "32Gi"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert c["image"] == "kubetune-runtime:test"
    mount = {"name": "pvc-0", "mountPath": "/mnt/pvc/kubetune-models", "readOnly": True}
    assert mount in c["volumeMounts"]


def test_cpu_model_requests_no_gpu_and_no_gpu_toleration() -> None:
    raw = example("routed")
    raw["spec"]["models"][1]["gpus"] = 0
    deployment = objects(raw)[("Deployment", "chat-small")]
    c = container(deployment)
    assert "nvidia.com/gpu" not in c["resources"].get("requests", {})
    assert "tolerations" not in deployment["spec"]["template"]["spec"]


def test_server_args_parse_with_kubetune_serve() -> None:
    raw = example("routed")
    raw["spec"]["server"]["apiKeySecretRef"] = {"name": "api", "key": "token"}
    deployment = objects(raw)[("Deployment", "chat-small")]
    args = serve_parser().parse_args(container(deployment)["args"][1:])
    assert container(deployment)["args"][0] == "serve"
    assert args.model == "/mnt/pvc/kubetune-models/Qwen/Qwen3-0.6B"
    assert args.quantization == "int8" and args.port == 8000
    assert args.max_batch_size == 8 and args.max_new_tokens == 512
    assert str(args.api_key_file) == "/etc/kubetune/api-key/token"
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-key"
    )
    assert volume["secret"] == {"secretName": "api", "items": [{"key": "token", "path": "token"}]}


def test_router_args_name_every_backend_service() -> None:
    raw = example("routed")
    raw["spec"]["routing"]["complexity"]["threshold"] = 0.7
    router = objects(raw)[("Deployment", "chat-router")]
    argv = container(router)["args"]
    assert argv[0] == "route"
    args = route_parser("kubetune route").parse_args(argv[1:])
    assert args.backend == ["large=http://chat-large:8000", "small=http://chat-small:8000"]
    assert (args.strategy, args.threshold, args.large, args.small) == (
        "complexity",
        0.7,
        "large",
        "small",
    )
    assert "nvidia.com/gpu" not in str(router)


def test_single_model_has_no_router_and_its_service_is_the_endpoint() -> None:
    raw = example("routed")
    raw["spec"]["models"] = raw["spec"]["models"][:1]
    raw["spec"]["routing"] = {"strategy": "single"}
    built = objects(raw)
    assert sorted(built) == [("Deployment", "chat-large"), ("Service", "chat-large")]
    spec = parse_spec(raw["spec"])
    assert endpoint("team-a", "chat", spec) == "http://chat-large.team-a.svc:8000/v1"
    assert endpoint("team-a", "chat", parse_spec(example("routed")["spec"])) == (
        "http://chat-router.team-a.svc:8000/v1"
    )


def test_names_are_bounded_and_deterministic() -> None:
    long = "m" * 60
    assert names.child_name("chat", "large") == "chat-large"
    assert names.router_name("chat") == "chat-router"
    assert len(names.child_name(long, "small")) <= 63
    assert names.child_name(long, "small") == names.child_name(long, "small")
    assert names.child_name(long, "small") != names.child_name(long, "large")


def test_finetunejob_adapter_waits_until_succeeded() -> None:
    raw = example("from-finetunejob")
    spec = parse_spec(raw["spec"])
    assert referenced_jobs(spec) == ["credit-card-faq"]
    for body in (None, {"status": {"phase": "Running"}}, {"status": {"phase": "Failed"}}):
        found = resolve(spec.models[0], {"credit-card-faq": body})
        assert isinstance(found, Waiting) and found.reason == "WaitingForFineTuneJob"
    built = build_children(OWNER, spec, {"credit-card-faq": None}, SETTINGS)
    assert [o["kind"] for o in built.apply] == ["Service"]
    assert built.models[0].waiting is not None


def test_finetunejob_adapter_is_mounted_read_only_and_annotated() -> None:
    raw = example("from-finetunejob")
    deployment = objects(raw, {"credit-card-faq": succeeded()})[("Deployment", "chat-faq")]
    c = container(deployment)
    args = serve_parser().parse_args(c["args"][1:])
    assert args.adapter == ["/mnt/pvc/kubetune-output/credit-card-faq/adapter"]
    assert {"name": "pvc-1", "mountPath": "/mnt/pvc/kubetune-output", "readOnly": True} in c[
        "volumeMounts"
    ]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "pvc-1",
        "persistentVolumeClaim": {"claimName": "kubetune-output", "readOnly": True},
    } in volumes
    notes = deployment["spec"]["template"]["metadata"]["annotations"]
    assert notes[names.ANNOTATION_ADAPTER] == "pvc://kubetune-output/credit-card-faq/adapter"


def test_new_adapter_or_new_run_changes_the_pod_template() -> None:
    raw = example("from-finetunejob")

    def template(job: Json) -> Json:
        built = objects(raw, {"credit-card-faq": job})
        return built[("Deployment", "chat-faq")]["spec"]["template"]

    first = template(succeeded())
    assert template(succeeded()) == first
    assert template(succeeded("pvc://kubetune-output/credit-card-faq-2/adapter")) != first
    assert template(succeeded(when="t2")) != first  # same path, a later run


def test_pvc_path_and_uri_adapters() -> None:
    spec = parse_spec(example("routed")["spec"])
    model = spec.models[0].model_copy(update={"adapter": None})
    assert resolve(model, {}) == Resolved(
        model="/mnt/pvc/kubetune-models/Qwen/Qwen3-8B", claims=("kubetune-models",)
    )
    raw = example("routed")
    raw["spec"]["models"][0]["adapter"] = {"pvc": {"claimName": "adapters", "path": "faq/v3"}}
    c = container(objects(raw)[("Deployment", "chat-large")])
    assert c["args"][c["args"].index("--adapter") + 1] == "/mnt/pvc/adapters/faq/v3"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"models": []}, "spec.models"),
        ({"models": [{"name": "a", "model": "m"}, {"name": "a", "model": "m"}]}, "spec"),
        ({"models": [{"name": "Big", "model": "m"}]}, "spec.models.0.name"),
        ({"server": {"port": 80}}, "spec.server.port"),
        (
            {"models": [{"name": "a", "model": "m", "resources": {"limits": {"cpu": "2 cores"}}}]},
            "spec.models.0.resources.limits.cpu",
        ),
        (
            {
                "models": [{"name": "router", "model": "m"}, {"name": "small", "model": "m"}],
                "routing": {"strategy": "single", "default": "small"},
            },
            "spec.models.0.name",
        ),
    ],
)
def test_invalid_specs_name_the_field(patch: Json, field: str) -> None:
    raw = {**example("routed")["spec"], **patch}
    with pytest.raises(ConfigError) as err:
        parse_spec(raw)
    assert any(p.startswith(field) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("name", ["routed", "from-finetunejob"])
def test_examples_parse(name: str) -> None:
    assert parse_spec(example(name)["spec"]).models


def test_a_rerunning_finetunejob_keeps_the_last_adapter_served() -> None:
    raw = example("from-finetunejob")
    spec = parse_spec(raw["spec"])
    served = build_children(OWNER, spec, {"credit-card-faq": succeeded()}, SETTINGS)
    deployment = next(o for o in served.apply if o["kind"] == "Deployment")
    again = build_children(
        OWNER, spec, {"credit-card-faq": {"status": {"phase": "Running"}}}, SETTINGS
    )
    assert again.models[0].waiting is not None
    kept = carry_over(again.models, {"chat-faq": deployment}, "chat")
    assert kept[0].waiting is None and kept[0].deployment is deployment
    assert kept[0].adapter == "pvc://kubetune-output/credit-card-faq/adapter"
    assert ("Deployment", "chat-faq") in wanted_children(again, spec, "chat")
    assert carry_over(again.models, {}, "chat")[0].waiting is not None  # never served: waits


def test_removed_models_and_the_router_are_not_wanted() -> None:
    raw = example("routed")
    raw["spec"]["models"] = raw["spec"]["models"][:1]
    raw["spec"]["routing"] = {"strategy": "single"}
    spec = parse_spec(raw["spec"])
    wanted = wanted_children(build_children(OWNER, spec, {}, SETTINGS), spec, "chat")
    assert wanted == {("Deployment", "chat-large"), ("Service", "chat-large")}
