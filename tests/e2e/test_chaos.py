"""bench/chaos.py at a CI size: 10 FineTuneJobs through scripted OOM / NaN / Preempted /
InvalidData / Succeeded endings while the operator is SIGKILLed 5 times and crash hooks fire;
no duplicate Job or pod, no lost job, attempts without gaps. The full size (50 jobs, 20 kills)
is the benchmark (BENCHMARKS.md, "Reliability (operator)")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from operator_helpers import REPO, install_crd

pytestmark = pytest.mark.e2e


def test_chaos_small(
    cluster: Any, kubectl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    install_crd(kubectl)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("PATH", cluster.env()["PATH"])
    sys.path.insert(0, str(REPO / "bench"))
    import chaos

    code = chaos.main(["--jobs", "10", "--kills", "5", "--timeout", "300",
                       "--log", str(tmp_path / "operator.log")])  # fmt: skip
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert "duplicates 0  lost jobs 0  problems 0" in out
    assert "crash hooks hit/armed: none armed" not in out
