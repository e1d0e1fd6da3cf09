"""`kubetune operator`: flags, settings from the environment, errors before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune_operator.cli import build_parser, main, settings_from
from kubetune_operator.settings import DEFAULT_TRAINER_IMAGE, Settings


def test_defaults_watch_every_namespace() -> None:
    args = build_parser("kubetune operator").parse_args([])
    assert args.namespace == [] and not args.all_namespaces
    assert (args.metrics_port, args.health_port, args.standalone) == (8080, 8081, False)
    assert settings_from(args).trainer_image in (
        DEFAULT_TRAINER_IMAGE,
        Settings.from_env().trainer_image,
    )


def test_namespaces_repeat_and_exclude_all_namespaces() -> None:
    parser = build_parser("kubetune operator")
    assert parser.parse_args(["-n", "a", "--namespace", "b"]).namespace == ["a", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["-n", "a", "--all-namespaces"])


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_TRAINER_IMAGE", "registry/trainer:env")
    monkeypatch.setenv("KUBETUNE_GPU_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]')
    parser = build_parser("kubetune operator")
    env_only = settings_from(parser.parse_args([]))
    assert env_only.trainer_image == "registry/trainer:env"
    assert env_only.gpu_tolerations == ({"key": "gpu", "operator": "Exists"},)
    flagged = settings_from(
        parser.parse_args(["--trainer-image", "registry/trainer:flag", "--gpu-tolerations", "[]"])
    )
    assert flagged.trainer_image == "registry/trainer:flag" and flagged.gpu_tolerations == ()


def test_bad_tolerations_stop_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpu-tolerations", "{not json"]) == 2
    assert "GPU tolerations must be a JSON list" in capsys.readouterr().err


def test_the_kubetune_dispatcher_reaches_the_operator(capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune_cli.main import main as kubetune

    with pytest.raises(SystemExit) as exit_info:
        kubetune(["operator", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--namespace",
        "--all-namespaces",
        "--metrics-port",
        "--health-port",
        "--trainer-image",
        "--standalone",
    ):
        assert flag in out


def test_the_oldest_process_gets_the_higher_priority_however_slow_its_start() -> None:
    """Two replicas started 0.3 s apart, the first one slower to get going (a loaded node)."""
    code = (
        "import sys, time; time.sleep(float(sys.argv[1])); "
        "from kubetune_operator.cli import peering_priority, process_start_time; "
        "print(peering_priority('oldest', process_start_time()))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "operator")}
    first = subprocess.Popen([sys.executable, "-c", code, "1.5"], stdout=subprocess.PIPE, env=env)
    time.sleep(0.3)
    second = subprocess.Popen([sys.executable, "-c", code, "0"], stdout=subprocess.PIPE, env=env)
    older, younger = (int(p.communicate(timeout=60)[0]) for p in (first, second))
    assert older > younger
