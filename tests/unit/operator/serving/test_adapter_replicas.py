"""Per-replica adapter state and canaries: what the pods report becomes status and decisions.

`build_children` gets, per model, what each ready server pod answered at GET /adapterz (here
made by hand, as `replica_probe` would pass them on); `replica_probe` itself is tested against
a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune_api.adapter_report import AdaptersReport, path_digest
from kubetune_api.deployment import AdapterStatus, ModelDeploymentStatus
from kubetune_operator.serving.builders import MdepOwner
from kubetune_operator.serving.plan import build_children, next_poll, parse_spec
from kubetune_operator.serving.replica_probe import probe_servers
from kubetune_operator.serving.replicas import PodReport
from kubetune_operator.serving.status import ModelState, adapter_events, derive_status
from kubetune_operator.settings import Settings, parse_networks
from kubetune_server.adapter_config import parse_adapter_entries

from .test_builders import example

OWNER = MdepOwner("team-a", "support", "uid-1")
SETTINGS = Settings(trainer_image="kubetune-runtime:test")
Json = dict[str, Any]
OLD = "/mnt/pvc/kubetune-output/faq-1/adapter"
NEW = "/mnt/pvc/kubetune-output/faq-2/adapter"
LEGAL = "/mnt/pvc/kubetune-output/legal-v3/adapter"


def spec(percent: float | None = 50, min_requests: int = 10) -> Json:
    raw = example("multi-lora")["spec"]
    raw["models"][0]["adapters"][0]["promotion"] |= {
        "canaryPercent": percent,
        "canaryMinRequests": min_requests,
    }
    return dict(raw)


def run(when: str, loss: float, folder: str) -> Json:
    path = folder.replace("/mnt/pvc/", "pvc://")
    return {
        "status": {
            "phase": "Succeeded",
            "output": {"adapterPath": path},
            "completionTime": when,
            "metrics": {"evalLoss": loss},
        }
    }


def entry(name: str, folder: str, state: str = "Loaded", **extra: Any) -> Json:
    return {"name": name, "state": state, "pathDigest": path_digest(folder), **extra}


def canary(folder: str, requests: int, errors: int, state: str = "Loaded") -> Json:
    return {
        "state": state,
        "pathDigest": path_digest(folder),
        "percent": 50,
        "requests": requests,
        "errors": errors,
        **({"reason": "adapter_config.json not found"} if state == "Failed" else {}),
    }


def pod(name: str, *entries: Json) -> PodReport:
    return PodReport(name, AdaptersReport.model_validate({"adapters": list(entries)}))


class Step:
    """One reconcile of the example's `base` model: the ConfigMap, statuses, status, events."""

    def __init__(
        self, raw: Json, job: Json, before: ModelDeploymentStatus, pods: list[PodReport] | None
    ) -> None:
        reports = None if pods is None else {"base": pods}
        built = build_children(
            OWNER, parse_spec(raw), {"credit-card-faq": job}, SETTINGS, before, reports
        )
        cm = next(o for o in built.apply if o["kind"] == "ConfigMap")
        self.config = json.loads(cm["data"]["adapters.json"])
        self.models: list[ModelState] = built.models
        self.status = derive_status(before, built.models, None, "e", 1, datetime.now(UTC))
        self.events = [(e.type, e.reason, e.message) for e in adapter_events(before, self.status)]

    @property
    def faq(self) -> AdapterStatus:
        adapters = self.models[0].adapters or []
        return next(a for a in adapters if a.name == "faq")


def served(raw: Json) -> ModelDeploymentStatus:
    """The status once run t1 (evalLoss 1.3, folder OLD) serves."""
    return Step(raw, run("t1", 1.3, OLD), ModelDeploymentStatus(), None).status


def test_replicas_say_loaded_loading_failed_or_unknown() -> None:
    raw = spec(percent=None)
    job = run("t1", 1.3, OLD)
    pods = [pod("base-a", entry("faq", OLD), entry("legal", LEGAL)), pod("base-b")]
    step = Step(raw, job, ModelDeploymentStatus(), pods)
    faq = step.faq
    assert [(r.pod, r.state) for r in faq.replicas or []] == [
        ("base-a", "Loaded"),
        ("base-b", "Loading"),  # its adapter list has no faq yet
    ]
    assert faq.state == "Loading"
    assert next_poll(parse_spec(raw), step.status, 10) == 10  # asked again soon

    pods = [
        pod("base-a", entry("faq", OLD), entry("legal", LEGAL)),
        pod("base-b", entry("faq", OLD), entry("legal", LEGAL)),
    ]
    step = Step(raw, job, step.status, pods)
    assert step.faq.state == "Loaded" and step.status.phase != "Degraded"
    assert next_poll(parse_spec(raw), step.status, 10) == 60  # settled: rarely

    bad = entry("legal", LEGAL, "Failed", reason="no adapter_config.json in the folder")
    pods = [pod("base-a", entry("faq", OLD), bad), PodReport("base-b", problem="timed out")]
    step = Step(raw, job, step.status, pods)
    legal = next(a for a in step.models[0].adapters or [] if a.name == "legal")
    assert legal.state == "Failed"
    assert legal.reason == "pod base-a: no adapter_config.json in the folder"
    assert [(r.pod, r.state, r.reason) for r in legal.replicas or []] == [
        ("base-a", "Failed", "no adapter_config.json in the folder"),
        ("base-b", "Unknown", "timed out"),
    ]
    assert step.status.phase == "Degraded" and "adapter legal" in (step.status.message or "")
    assert ("Warning", "AdapterFailed") in [e[:2] for e in step.events]

    nobody = Step(raw, job, ModelDeploymentStatus(), [PodReport("base-a", problem="no IP yet")])
    assert nobody.faq.state == "Configured"  # no pod has said anything yet
    assert next_poll(parse_spec(raw), nobody.status, 10) == 60  # a Ready pod wakes a reconcile
    unasked = Step(raw, job, ModelDeploymentStatus(), None)
    assert unasked.faq.state == "Configured" and unasked.faq.replicas is None


def test_a_new_run_is_a_canary_first_and_a_worse_one_is_rolled_back() -> None:
    raw = spec()
    before = served(raw)
    started = Step(raw, run("t2", 1.2, NEW), before, None)
    assert started.faq.path == OLD and started.faq.revision == "t1"  # still served
    trial = started.faq.canary
    assert trial is not None and (trial.state, trial.path, trial.percent) == ("Running", NEW, 50)
    assert started.config["faq"] == {"path": OLD, "canary": {"path": NEW, "percent": 50.0}}
    read = parse_adapter_entries(json.dumps(started.config), "cm")["faq"]  # as the server reads it
    assert read.path == OLD and read.canary is not None and read.canary.path == NEW
    assert started.events == [
        ("Normal", "CanaryStarted", "model base adapter faq: run t2 takes 50% of its requests")
    ]
    assert next_poll(parse_spec(raw), started.status, 10) == 10

    few = [pod("base-a", entry("faq", OLD, requests=9, errors=0, canary=canary(NEW, 4, 3)))]
    waiting = Step(raw, run("t2", 1.2, NEW), started.status, few)
    trial = waiting.faq.canary
    assert trial is not None and trial.state == "Running"  # 4 < canaryMinRequests 10
    assert (trial.requests, trial.errors, trial.stable_requests) == (4, 3, 9)

    worse = [
        pod("base-a", entry("faq", OLD, requests=9, errors=0, canary=canary(NEW, 6, 4))),
        pod("base-b", entry("faq", OLD, requests=11, errors=1, canary=canary(NEW, 5, 3))),
    ]
    rolled = Step(raw, run("t2", 1.2, NEW), waiting.status, worse)
    trial = rolled.faq.canary
    assert trial is not None and trial.state == "RolledBack"
    assert trial.reason == (
        "canary error rate 63.6% (7 of 11) is higher than the served adapter's 5.0% (1 of 20)"
    )
    assert rolled.faq.path == OLD and rolled.config["faq"] == OLD  # the canary serves nothing
    assert [e[:2] for e in rolled.events] == [("Warning", "CanaryRolledBack")]
    again = Step(raw, run("t2", 1.2, NEW), rolled.status, worse)
    assert again.faq.canary == trial and again.config["faq"] == OLD  # never tried again
    assert again.faq.reason == f"not promoted: {trial.reason}" and again.events == []

    newer = Step(raw, run("t3", 1.1, NEW.replace("faq-2", "faq-3")), again.status, None)
    trial = newer.faq.canary
    assert trial is not None and (trial.revision, trial.state) == ("t3", "Running")


def test_a_canary_as_good_as_the_served_one_is_promoted() -> None:
    raw = spec()
    started = Step(raw, run("t2", 1.2, NEW), served(raw), None)
    fine = [
        pod("base-a", entry("faq", OLD, requests=12, errors=1, canary=canary(NEW, 10, 0))),
        pod("base-b", entry("faq", OLD, requests=3, errors=0, canary=canary(NEW, 2, 0))),
    ]
    promoted = Step(raw, run("t2", 1.2, NEW), started.status, fine)
    faq = promoted.faq
    assert (faq.path, faq.revision, faq.eval_loss) == (NEW, "t2", 1.2)
    assert faq.canary is not None and faq.canary.state == "Promoted"
    assert promoted.config["faq"] == NEW
    assert faq.state == "Loading"  # the pods still serve OLD until they read the new list
    assert promoted.events == [
        (
            "Normal",
            "AdapterPromoted",
            "model base adapter faq: run t2 (evalLoss 1.2) after its canary: 0 of 12 requests "
            "failed (served: 1 of 15)",
        )
    ]
    settled = [pod("base-a", entry("faq", NEW)), pod("base-b", entry("faq", NEW))]
    after = Step(raw, run("t2", 1.2, NEW), promoted.status, settled)
    assert after.faq.state == "Loaded" and after.events == []


def test_a_canary_that_fails_to_load_is_rolled_back_at_once() -> None:
    raw = spec()
    started = Step(raw, run("t2", 1.2, NEW), served(raw), None)
    broken = [pod("base-a", entry("faq", OLD, canary=canary(NEW, 0, 0, state="Failed")))]
    rolled = Step(raw, run("t2", 1.2, NEW), started.status, broken)
    trial = rolled.faq.canary
    assert trial is not None and trial.state == "RolledBack"
    assert trial.reason == "the canary failed to load on pod base-a: adapter_config.json not found"
    assert rolled.config["faq"] == OLD


def test_the_evaluation_gate_comes_before_the_canary() -> None:
    raw = spec()
    refused = Step(raw, run("t2", 1.9, NEW), served(raw), None)
    assert refused.faq.canary is None and refused.config["faq"] == OLD
    assert "not promoted" in (refused.faq.reason or "")


def test_no_canary_on_vllm() -> None:
    raw = spec()
    raw["models"][0] |= {"runtime": "vllm", "gpus": 1}
    with pytest.raises(ValueError, match="canaryPercent needs runtime kubetune"):
        parse_spec(raw)


@pytest.fixture
def adapterz() -> Iterator[tuple[int, dict[str, Any]]]:
    """A real HTTP server on 127.0.0.1 answering /adapterz with `answer['body']`."""
    answer: dict[str, Any] = {"body": b"{}"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer["body"] if self.path == "/adapterz" else b"not here"
            self.send_response(200 if self.path == "/adapterz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], answer
    server.shutdown()


def server_pod(name: str, ip: str | None, ready: bool = True, model: str = "base") -> Json:
    labels = {
        "kubetune.io/model": model,
        "app.kubernetes.io/component": "server",
        "kubetune.io/modeldeployment": "support",
    }
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    status: Json = {"conditions": [condition]} | ({"podIP": ip} if ip else {})
    return {"metadata": {"name": name, "labels": labels}, "status": status}


def test_the_probe_asks_ready_pods_in_the_allowed_networks(
    adapterz: tuple[int, dict[str, Any]],
) -> None:
    port, answer = adapterz
    answer["body"] = json.dumps({"adapters": [entry("faq", OLD, requests=3)]}).encode()
    settings = Settings(pod_networks=parse_networks("127.0.0.0/8"))
    router = server_pod("support-router-x", "127.0.0.1", model="router")
    router["metadata"]["labels"]["app.kubernetes.io/component"] = "router"
    pods = [
        server_pod("base-b", "127.0.0.1"),
        server_pod("base-a", "127.0.0.1"),
        server_pod("base-c", "10.244.0.7"),  # a kwok pod's made-up IP: never contacted
        server_pod("base-d", None),
        server_pod("base-e", "127.0.0.1", ready=False),  # not asked, not listed
        router,
    ]
    reports = probe_servers(pods, {"base"}, port, settings)["base"]
    assert [r.pod for r in reports] == ["base-a", "base-b", "base-c", "base-d"]
    first = reports[0].report
    assert first is not None and first.adapters[0].requests == 3
    assert reports[2].problem == "pod IP 10.244.0.7 is outside the operator's pod networks"
    assert reports[3].problem == "the pod has no IP yet"

    answer["body"] = b'{"adapters": "many"}'
    bad = probe_servers(pods[:1], {"base"}, port, settings)["base"][0]
    assert bad.report is None and "answered something else" in (bad.problem or "")
    refused = probe_servers(pods[:1], {"base"}, 1, settings)["base"][0]
    assert refused.report is None and "GET /adapterz failed" in (refused.problem or "")


def test_pod_networks_parse_and_decide() -> None:
    settings = Settings(pod_networks=parse_networks("10.251.7.0/24, fd00::/64"))
    assert settings.may_contact("10.251.7.12") and settings.may_contact("fd00::5")
    assert not settings.may_contact("10.244.0.3") and not settings.may_contact("nonsense")
    assert Settings().may_contact("203.0.113.9")  # none listed: any
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not a CIDR"):
        parse_networks("10.0.0.0/33")
    assert Settings.from_env({"KUBETUNE_POD_NETWORKS": "127.0.0.1/32"}).pod_networks == (
        parse_networks("127.0.0.1/32")
    )
