"""Issue 11's trainer fault tests, smaller: `bench/trainer_faults.py` on the tiny Qwen3 (CPU).

For none, length-grouped and packing (LoRA dropout 0.1): SIGKILL at a random step, SIGKILL inside
a slowed checkpoint write, SIGTERM, resume each time: the adapter equals the uninterrupted run's
within 1e-6 and no more than one checkpoint interval is redone; an injected OOM resumed with the
micro-batch halved and the accumulation doubled, and a NaN resumed with the learning rate / 3,
finish with the same steps and every example once per epoch. The bench checks, this test reads
its verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def test_kills_preemption_and_retries_resume_exactly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trainer_faults.py"), "--rows", "24", "--kills", "1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer_image'}"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    results = json.loads(lines[-1])
    by = {(r["mode"], r["scenario"]): r for r in results}
    assert set(by) == {
        (m, s)
        for m in ("none", "length-grouped", "packing")
        for s in ("straight", "kills", "oom", "nan")
    }
    for r in results:
        assert not r["problems"], (r["mode"], r["scenario"], r["problems"])
        assert r["once_per_epoch"] and r["examples_per_epoch"] == [r["kept_rows"]] * 2
    for mode in ("none", "length-grouped", "packing"):
        kills = by[(mode, "kills")]
        assert kills["kills"] == 2 and kills["sigterms"] == 1
        assert kills["max_abs_delta"] <= 1e-6
        assert max(kills["steps_redone"]) <= 3 and kills["steps_redone"][-1] == 0
        assert by[(mode, "oom")]["steps"] == by[(mode, "straight")]["steps"]
    assert proc.returncode == 0, proc.stdout[-3000:]
