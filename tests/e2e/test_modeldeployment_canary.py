"""Per-replica adapter state and canaries, between the real operator and real servers.

The operator runs as a subprocess that may contact pods on 127.0.0.0/8 only and asks every 1 s
(`KUBETUNE_POD_NETWORKS`, `KUBETUNE_ADAPTER_POLL_SECONDS`). kwok runs the two server pods of a
ModelDeployment, and this test plays their kubelet: it gives each pod a loopback IP (127.0.0.2
and 127.0.0.3, as a CNI gives a pod its IP), runs the pod's own `kubetune serve` arguments there
on the tiny random Qwen3, and copies the adapters ConfigMap into the file each server watches
whenever it changes (as the kubelet refreshes a mounted ConfigMap). So the operator reads real
servers over HTTP, and the servers really split and count the adapter's requests:
- per replica: `faq` Loaded on both pods; `broken` (a folder without an adapter) Failed on both
  with the server's reason, the ModelDeployment Degraded until it is removed;
- a new run whose adapter has NaN weights passes the evaluation gate, becomes a canary on 50%
  of faq's requests, fails every request sent to it, and is rolled back (status figures equal
  what the client saw, a CanaryRolledBack Event), after which every request succeeds;
- a good newer run becomes a canary, answers its share, and is promoted (AdapterPromoted).
Adapter paths are host folders (a FineTuneJob's adapterPath may be a plain path), so the
servers load exactly the folders the operator names.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from operator_helpers import (
    OperatorProcess,
    create_pvcs,
    delete_pvs,
    finish_pod,
    install_crd,
    wait_phase,
    wait_pod_running,
)
from test_helm import ftj_manifest
from test_modeldeployment import CRD, mdep_event_reasons

from kubetune_server.process import KubetuneProcess, free_port

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]
Json = dict[str, Any]
NAME = "canary"
POD_IPS = ("127.0.0.2", "127.0.0.3")


def save_lora(model_dir: Path, out: Path, seed: int, nan: bool = False) -> Path:
    """A LoRA adapter of the tiny Qwen3, saved as the trainer saves one (random B, or NaN)."""
    from transformers import AutoTokenizer

    from kubetune_api.finetune import MethodSpec
    from kubetune_trainer.methods import apply_method, load_base_model, save_adapter

    spec = MethodSpec(type="lora", rank=4, dropout=0.0)
    model, _ = apply_method(
        load_base_model(str(model_dir), spec, dtype=torch.float32),
        spec,
        gradient_checkpointing=False,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                noise = torch.randn(param.shape, generator=generator) * 0.05
                param.copy_(torch.full_like(param, float("nan")) if nan else noise)
    save_adapter(model, out, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    return out


@pytest.fixture(scope="module")
def folders(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("canary-adapters")
    out = {
        "good-1": save_lora(tiny_model_dir, root / "good-1", 1),
        "nan": save_lora(tiny_model_dir, root / "nan", 2, nan=True),
        "good-2": save_lora(tiny_model_dir, root / "good-2", 3),
        "broken": root / "broken",
    }
    out["broken"].mkdir()
    (out["broken"] / "README.md").write_text("not an adapter\n")
    return out


@pytest.fixture(scope="module")
def polling_operator(
    cluster: Any, kubectl: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, allowed to contact pods on loopback only, asking them every second."""
    install_crd(kubectl)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    env = cluster.env() | {
        "KUBETUNE_POD_NETWORKS": "127.0.0.0/8",
        "KUBETUNE_ADAPTER_POLL_SECONDS": "1",
    }
    proc = OperatorProcess(env, tmp_path_factory.mktemp("operator") / "operator.log")
    proc.start()
    yield proc
    proc.stop()
    print(f"--- operator log ({proc.log_path}) ---\n{proc.log_tail()}")


class PodKubelet:
    """Plays the kubelet of the ModelDeployment's server pods: IPs, processes, ConfigMap file."""

    def __init__(self, kubectl: Any, ns: str, work: Path) -> None:
        self.kubectl, self.ns, self.work = kubectl, ns, work
        self.servers: dict[str, KubetuneProcess] = {}
        self.urls: list[str] = []
        self._stop = threading.Event()
        self._sync = threading.Thread(target=self._sync_forever, daemon=True)

    def start(self, pods: list[Json]) -> None:
        self._write_config()
        for pod, ip in zip(
            sorted(pods, key=lambda p: p["metadata"]["name"]), POD_IPS, strict=False
        ):
            name = pod["metadata"]["name"]
            patch = {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}
            self.kubectl("patch", "pod", name, "-n", self.ns, "--subresource=status",
                         "--type=merge", "-p", json.dumps(patch))  # fmt: skip
            args = pod["spec"]["containers"][0]["args"]
            port = int(args[args.index("--port") + 1])
            args = [self._host_path(a) for a in args[1:]]  # drop the `serve` subcommand
            server = KubetuneProcess(
                "serve", [*args, "--threads", "1"], host=ip, port=port, ready_s=600
            )
            server.launch()
            self.servers[name] = server
        for server in self.servers.values():
            server.wait_ready()
            self.urls.append(server.url)
        self._sync.start()

    def stop(self) -> None:
        self._stop.set()
        for server in self.servers.values():
            server.stop()

    def _host_path(self, arg: str) -> str:
        return str(self.work / "adapters.json") if arg.endswith("/adapters.json") else arg

    def config(self) -> Json:
        cm = self.kubectl.json("get", "configmap", f"{NAME}-base-adapters", "-n", self.ns)
        return dict(json.loads(cm["data"]["adapters.json"]))

    def _write_config(self) -> None:
        text = json.dumps(self.config())
        target = self.work / "adapters.json"
        if not target.exists() or target.read_text() != text:
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(target)  # one step, as the kubelet's atomic symlink swap

    def _sync_forever(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._write_config()
            except Exception as err:  # a failed read is retried next round
                print(f"kubelet stand-in: {err}")


def manifest(model_dir: Path, broken: Path, port: int) -> Json:
    base = {
        "name": "base",
        "model": str(model_dir),
        "quantization": "none",
        "replicas": 2,
        "gpus": 0,
        "adapters": [
            {
                "name": "faq",
                "fineTuneJob": "faq",
                "promotion": {"canaryPercent": 50, "canaryMinRequests": 12},
            },
            {"name": "broken", "path": str(broken)},
        ],
    }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {"models": [base], "server": {"port": port, "maxNewTokens": 4}},
    }


def new_run(kubectl: Any, ns: str, folder: Path, when: str, loss: float) -> None:
    patch = {
        "status": {
            "output": {"adapterPath": str(folder)},
            "completionTime": when,
            "metrics": {"evalLoss": loss},
        }
    }
    kubectl("patch", "ftj", "faq", "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch))  # fmt: skip


def adapter(kubectl: Any, ns: str, name: str) -> Json:
    status = kubectl.json("get", "mdep", NAME, "-n", ns).get("status") or {}
    found = (status.get("models") or [{}])[0].get("adapters") or []
    return next((a for a in found if a["name"] == name), {})


def ask(urls: list[str], count: int) -> dict[str, list[int]]:
    """`count` requests for model faq, alternating between the servers: status codes by the
    variant each server says it used."""
    seen: dict[str, list[int]] = {"stable": [], "canary": []}
    for i in range(count):
        body = {"model": "faq", "prompt": f"question {i}", "max_tokens": 2, "temperature": 0}
        answer = httpx.post(f"{urls[i % len(urls)]}/v1/completions", json=body, timeout=60)
        seen[answer.headers.get("x-kubetune-adapter-variant", "?")].append(answer.status_code)
    return seen


def test_replica_states_and_a_canary_rolled_back_then_one_promoted(
    kubectl: Any,
    namespace: str,
    polling_operator: OperatorProcess,
    tiny_model_dir: Path,
    folders: dict[str, Path],
    tmp_path: Path,
    wait_until: Wait,
) -> None:
    ns = namespace
    create_pvcs(kubectl, ns, {"models", "data", "output"})
    kubelet = PodKubelet(kubectl, ns, tmp_path)
    try:
        kubectl.apply(ftj_manifest("faq"), namespace=ns)
        trainer = wait_pod_running(kubectl, ns, "faq", 0, wait_until)[0]
        finish_pod(kubectl, ns, trainer["metadata"]["name"], 0)
        wait_phase(kubectl, ns, "faq", "Succeeded", wait_until)
        new_run(kubectl, ns, folders["good-1"], "2030-01-01T00:00:00Z", 1.30)
        kubectl.apply(manifest(tiny_model_dir, folders["broken"], free_port()), namespace=ns)
        pods = wait_until(
            lambda: (
                (p := kubectl.json("get", "pods", "-n", ns, "-l", "kubetune.io/model=base"))
                and len([i for i in p["items"] if i["status"].get("phase") == "Running"]) == 2
                and p["items"]
            ),
            timeout=90,
            what="both server pods Running on kwok nodes",
        )
        kubelet.start(pods)
        names = sorted(kubelet.servers)

        faq = wait_until(
            lambda: (a := adapter(kubectl, ns, "faq")).get("state") == "Loaded" and a,
            timeout=120, what="faq Loaded on both replicas",
        )  # fmt: skip
        assert [(r["pod"], r["state"]) for r in faq["replicas"]] == [(n, "Loaded") for n in names]
        broken = adapter(kubectl, ns, "broken")
        assert broken["state"] == "Failed", broken
        assert [r["state"] for r in broken["replicas"]] == ["Failed", "Failed"], broken
        assert broken["reason"].startswith(f"pod {names[0]}: "), broken
        status = kubectl.json("get", "mdep", NAME, "-n", ns)["status"]
        assert status["phase"] == "Degraded" and "adapter broken" in status["message"], status
        assert "AdapterFailed" in mdep_event_reasons(kubectl, ns, NAME)
        remove = [{"op": "remove", "path": "/spec/models/0/adapters/1"}]
        kubectl("patch", "mdep", NAME, "-n", ns, "--type=json", "-p", json.dumps(remove))
        wait_until(
            lambda: kubectl.json("get", "mdep", NAME, "-n", ns)["status"]["phase"] == "Available",
            timeout=60, what="Available once the broken adapter is gone",
        )  # fmt: skip

        # a new run with NaN weights: better evalLoss, so a canary; it fails what it answers
        new_run(kubectl, ns, folders["nan"], "2030-01-02T00:00:00Z", 1.20)
        wait_until(lambda: "canary" in json.dumps(kubelet.config()), timeout=60,
                   what="the canary in the ConfigMap")  # fmt: skip
        wait_until(
            lambda: all(
                (httpx.get(f"{u}/adapterz", timeout=5).json()["adapters"][0].get("canary") or {})
                .get("state") == "Loaded"
                for u in kubelet.urls
            ),
            timeout=120, what="the canary loaded on both servers",
        )  # fmt: skip
        seen = ask(kubelet.urls, 40)
        print(f"with the NaN canary: {seen}")
        assert set(seen["stable"]) == {200}, seen
        assert seen["canary"] and all(code >= 500 for code in seen["canary"]), seen
        rolled = wait_until(
            lambda: ((a := adapter(kubectl, ns, "faq")).get("canary") or {}).get("state")
            == "RolledBack" and a,
            timeout=60, what="the NaN canary rolled back",
        )  # fmt: skip
        trial = rolled["canary"]  # the figures when the operator decided, mid-way through
        assert 12 <= trial["requests"] <= len(seen["canary"]), trial  # canaryMinRequests
        assert trial["requests"] - 2 <= trial["errors"] <= trial["requests"], trial  # in flight
        assert trial["stableErrors"] == 0 and trial["stableRequests"] > 0, trial
        assert trial["reason"].startswith("canary error rate "), trial
        assert trial["reason"].endswith(
            f"higher than the served adapter's 0.0% (0 of {trial['stableRequests']})"
        )
        assert rolled["path"] == str(folders["good-1"]) and rolled["revision"].startswith(
            "2030-01-01"
        )
        wait_until(lambda: "CanaryRolledBack" in mdep_event_reasons(kubectl, ns, NAME),
                   timeout=30, what="CanaryRolledBack Event")  # fmt: skip
        assert kubelet.config()["faq"] == str(folders["good-1"])
        wait_until(
            lambda: all(
                httpx.get(f"{u}/adapterz", timeout=5).json()["adapters"][0].get("canary") is None
                for u in kubelet.urls
            ),
            timeout=60, what="the canary unloaded from both servers",
        )  # fmt: skip
        after = ask(kubelet.urls, 10)
        assert after == {"stable": [200] * 10, "canary": []}, after

        # a good newer run: a canary again, as good as the served one, promoted
        new_run(kubectl, ns, folders["good-2"], "2030-01-03T00:00:00Z", 1.10)
        wait_until(
            lambda: ((adapter(kubectl, ns, "faq").get("canary") or {}).get("revision") or "")
            .startswith("2030-01-03"),
            timeout=60, what="the good run on trial",
        )  # fmt: skip
        time.sleep(3)  # the kubelet stand-in's next copy and the servers' next read
        deadline = time.monotonic() + 120
        promoted: Json = {}
        while time.monotonic() < deadline and not promoted:
            seen = ask(kubelet.urls, 12)
            assert all(c == 200 for codes in seen.values() for c in codes), seen
            faq = adapter(kubectl, ns, "faq")
            promoted = faq if (faq.get("canary") or {}).get("state") == "Promoted" else {}
        assert promoted, adapter(kubectl, ns, "faq")
        assert promoted["path"] == str(folders["good-2"]) and promoted["evalLoss"] == 1.10
        assert promoted["canary"]["errors"] == 0 and promoted["canary"]["requests"] >= 12
        wait_until(lambda: "AdapterPromoted" in mdep_event_reasons(kubectl, ns, NAME),
                   timeout=30, what="AdapterPromoted Event")  # fmt: skip
        wait_until(
            lambda: adapter(kubectl, ns, "faq").get("state") == "Loaded",
            timeout=120, what="both replicas serving the promoted run",
        )  # fmt: skip
        assert "CanaryStarted" in mdep_event_reasons(kubectl, ns, NAME)
    finally:
        kubelet.stop()
        kubectl("delete", "mdep,ftj", "--all", "-n", ns, "--wait=false", check=False)
        delete_pvs(kubectl, ns)
