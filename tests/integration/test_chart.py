"""The Helm chart, rendered with `helm template` under several value sets; asserts on the objects.

What is checked: `helm lint --strict`; the exact RBAC rules (least privilege, cluster-wide by
default, per-namespace Roles with `watchNamespaces`); the pod and container security context;
the flags and environment the operator gets, parsed by the operator's own argument parser and
settings loader; CRDs behind `crds.enabled` with the optional keep annotation and the same spec
as manifests/crds; kopf peering for replicaCount > 1; metrics, ServiceMonitor and pass-through
pod settings. Needs helm (see chart_render).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import (
    CHART,
    NAMESPACE,
    REPO,
    Obj,
    env_of,
    find,
    helm,
    kinds,
    operator_container,
    render,
)

from kubetune_operator.cli import build_parser
from kubetune_operator.settings import Settings

pytestmark = pytest.mark.integration

FULLNAME = "kubetune"  # release "kubetune" + chart "kubetune" collapse to one word
NAMESPACED_RULES = [
    {"apiGroups": ["kubetune.io"], "resources": ["finetunejobs"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["configmaps", "services", "serviceaccounts"], "verbs": ["create", "patch"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["kubetune.io"], "resources": ["modeldeployments"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["kubetune.io"], "resources": ["modeldeployments/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": ["list", "delete"]},
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list", "watch"]},
]  # fmt: skip
CRD_WATCH = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["list", "watch"],
}


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return render()


def parse_operator_args(container: Obj) -> Any:
    """The container's args as `kubetune operator` parses them (args[0] is the subcommand)."""
    args = container["args"]
    assert args[0] == "operator"
    return build_parser("kubetune operator").parse_args(args[1:])


# --- lint ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{}, {"watchNamespaces": ["a", "b"], "replicaCount": 2}, {"crds.enabled": False}],
    ids=["default", "namespaces-peering", "no-crds"],
)
def test_helm_lint_strict(values: dict[str, Any]) -> None:
    args = [a for k, v in values.items() for a in ("--set-json", f"{k}={json.dumps(v)}")]
    result = helm("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


# --- objects and RBAC ------------------------------------------------------------------------


def test_default_objects(default: list[Obj]) -> None:
    assert kinds(default) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",  # the trainers may write only progress and metrics
        "ValidatingAdmissionPolicyBinding",
    ]
    cluster_scoped = ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
    cluster_scoped += ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    for obj in default:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "kubetune", obj["kind"]
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_cluster_role_is_least_privilege(default: list[Obj]) -> None:
    role = find(default, "ClusterRole", FULLNAME)
    assert role["rules"] == [*NAMESPACED_RULES, CRD_WATCH]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "secrets" not in rule["resources"], "the operator never reads Secrets"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    binding = find(default, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    assert find(default, "ServiceAccount", FULLNAME)["metadata"]["namespace"] == NAMESPACE


def test_trainer_role_needs_nothing_the_operator_lacks(default: list[Obj]) -> None:
    """Kubernetes refuses to let the operator create a Role granting more than it holds."""
    from kubetune_operator.finetune.build.rbac import build_role
    from kubetune_operator.owner import Owner

    owner = Owner.of({"metadata": {"name": "x", "namespace": "ns", "uid": "u"}})
    granted = find(default, "ClusterRole", FULLNAME)["rules"]
    for rule in build_role(owner)["rules"]:
        for resource in rule["resources"]:
            holders = [
                g
                for g in granted
                if resource in g["resources"] and rule["apiGroups"] == g["apiGroups"]
            ]
            assert holders and set(rule["verbs"]) <= set(holders[0]["verbs"]), rule


def test_watch_namespaces_uses_roles_only() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    assert "ClusterRole" not in kinds(objects) and "ClusterRoleBinding" not in kinds(objects)
    for ns in ("team-a", "team-b"):
        role = find(objects, "Role", FULLNAME, ns)
        assert role["rules"] == NAMESPACED_RULES
        binding = find(objects, "RoleBinding", FULLNAME, ns)
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    args = parse_operator_args(operator_container(objects))
    assert args.namespace == ["team-a", "team-b"] and not args.all_namespaces


def test_rbac_create_false_renders_no_rbac() -> None:
    objects = render(
        {"rbac.create": False, "serviceAccount.create": False, "serviceAccount.name": "mine"}
    )
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} & set(
        kinds(objects)
    )
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mine"


def test_existing_service_account_needs_a_name() -> None:
    result = helm(
        "template", "kubetune", str(CHART), "--set", "serviceAccount.create=false", check=False
    )
    assert result.returncode != 0
    assert "serviceAccount.name is required" in result.stderr


# --- the operator pod --------------------------------------------------------------------------


def test_security_context(default: list[Obj]) -> None:
    pod = find(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(default)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_default_flags_and_settings(default: list[Obj]) -> None:
    deployment = find(default, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two standalone pods
    container = operator_container(default)
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    args = parse_operator_args(container)
    assert args.all_namespaces and args.standalone and args.namespace == []
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": args.metrics_port, "health": args.health_port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = env_of(container)
    settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.trainer_image == "ghcr.io/kubetune/trainer:0.1.0"
    assert settings.gpu_tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    assert env["KUBETUNE_SERVER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_defaults_reach_the_operator_settings() -> None:
    tolerations = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    ]
    objects = render(
        {
            "defaults.trainerImage": "registry.example/trainer:1.2.3",
            "defaults.gpuTolerations": tolerations,
            "defaults.gpuMemory": "24Gi",
        }
    )
    env = env_of(operator_container(objects))
    settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.trainer_image == "registry.example/trainer:1.2.3"
    assert [dict(t) for t in settings.gpu_tolerations] == tolerations
    assert settings.gpu_memory == "24Gi"
    default = Settings.from_env(
        {k: v for k, v in env_of(operator_container(render({}))).items() if isinstance(v, str)}
    )
    assert default.gpu_memory == "80Gi"
    none = env_of(operator_container(render({"defaults.gpuMemory": ""})))
    assert "KUBETUNE_GPU_MEMORY" not in none


def test_pod_pass_through_settings() -> None:
    objects = render(
        {
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"pool": "system"},
            "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            "priorityClassName": "system-cluster-critical",
            "image.digest": "sha256:" + "a" * 64,
            "resources": {"requests": {"cpu": "1"}},
            "extraArgs": ["--verbose"],
            "podLabels": {"team": "ml"},
        }
    )
    pod = find(objects, "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "system"}  # merged
    assert spec["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists"}]
    assert "nodeAffinity" in spec["affinity"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert pod["metadata"]["labels"]["team"] == "ml"
    container = operator_container(objects)
    assert container["image"] == "ghcr.io/kubetune/operator@sha256:" + "a" * 64
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "256Mi"}  # merged
    assert parse_operator_args(container).verbose
    assert find(objects, "ServiceAccount")["imagePullSecrets"] == [{"name": "regcred"}]


# --- CRDs --------------------------------------------------------------------------------------


def test_crds_match_manifests_and_keep_by_default(default: list[Obj]) -> None:
    crds = [o for o in default if o["kind"] == "CustomResourceDefinition"]
    for path in sorted((REPO / "manifests" / "crds").glob("*.yaml")):
        plain = yaml.safe_load(path.read_text())
        chart = find(crds, "CustomResourceDefinition", plain["metadata"]["name"])
        assert chart["spec"] == plain["spec"], f"chart CRD differs from {path.name}: make crds"
        assert chart["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert chart["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubetune"
    assert len(crds) == len(list((REPO / "manifests" / "crds").glob("*.yaml")))


def test_crds_keep_false_has_no_annotation() -> None:
    objects = render({"crds.keep": False})
    for crd in (o for o in objects if o["kind"] == "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


def test_crds_disabled() -> None:
    objects = render({"crds.enabled": False})
    assert "CustomResourceDefinition" not in kinds(objects)
    assert "Deployment" in kinds(objects)


# --- replicas and peering ------------------------------------------------------------------


def test_single_replica_has_no_peering(default: list[Obj]) -> None:
    assert not [o for o in default if "KopfPeering" in o["kind"]]
    rules = find(default, "ClusterRole")["rules"]
    assert not [r for r in rules if r["apiGroups"] == ["kopf.dev"]]


def test_replicas_use_kopf_peering_cluster_wide() -> None:
    objects = render({"replicaCount": 3})
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert "strategy" not in deployment["spec"]  # rolling: peers hand over
    args = operator_container(objects)["args"]
    assert f"--peering={FULLNAME}" in args and "--standalone" not in args
    assert find(objects, "ClusterKopfPeering", FULLNAME)["apiVersion"] == "kopf.dev/v1"
    assert "--priority=oldest" in args  # distinct priorities: peers never all pause
    shipped = yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text())
    crds = {o["metadata"]["name"]: o for o in shipped}  # crds/: installed before the templates
    for name in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        assert crds[name]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    rules = find(objects, "ClusterRole")["rules"]
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in rules


def test_replicas_with_namespaces_use_namespaced_peerings() -> None:
    objects = render(
        {
            "replicaCount": 2,
            "watchNamespaces": ["a", "b"],
            "peering.name": "tuner",
        }
    )
    for ns in ("a", "b"):
        find(objects, "KopfPeering", "tuner", ns)
        assert {
            "apiGroups": ["kopf.dev"],
            "resources": ["kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        } in find(objects, "Role", FULLNAME, ns)["rules"]
    assert "ClusterKopfPeering" not in kinds(objects)


def test_peering_flag_is_accepted_by_the_operator() -> None:
    """The chart passes --peering for replicaCount > 1; the operator CLI must accept it."""
    container = operator_container(render({"replicaCount": 2}))
    known = {a.split("=")[0] for a in container["args"]}
    parser_flags = set(build_parser("kubetune operator")._option_string_actions)
    assert known - {"operator"} <= parser_flags
    parse_operator_args(container)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_service_and_service_monitor() -> None:
    objects = render(
        {
            "metrics.serviceMonitor.enabled": True,
            "metrics.serviceMonitor.labels": {"release": "prom"},
        }
    )
    service = find(objects, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    deployment = find(objects, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    monitor = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_metrics_off() -> None:
    objects = render({"metrics.enabled": False, "metrics.serviceMonitor.enabled": True})
    assert "Service" not in kinds(objects) and "ServiceMonitor" not in kinds(objects)
    container = operator_container(objects)
    assert parse_operator_args(container).metrics_port == 0
    assert [p["name"] for p in container["ports"]] == ["health"]


def test_chart_files_present() -> None:
    for name in ("Chart.yaml", "values.yaml", "templates/NOTES.txt", "templates/_helpers.tpl"):
        assert (CHART / name).exists(), name
    assert Path(CHART / "templates" / "crds").is_dir()
