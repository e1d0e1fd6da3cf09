"""The chart's trainer-status ValidatingAdmissionPolicy guards every status field but the
trainer's own (progress, metrics: what kube_status patches), so a new status field cannot slip
past it. Read from the template text; no helm needed."""

from __future__ import annotations

import re
from pathlib import Path

from kubetune_api.status import FineTuneJobStatus

TEMPLATE = (
    Path(__file__).resolve().parents[2] / "charts" / "kubetune" / "templates" / "admission.yaml"
)
TRAINERS = {"progress", "metrics"}


def test_policy_lists_every_operator_status_field() -> None:
    listed = re.search(r"\$fields := list (.*) \}\}", TEMPLATE.read_text())
    assert listed, "admission.yaml no longer defines $fields"
    guarded = set(re.findall(r'"(\w+)"', listed.group(1)))
    wire = {info.alias or name for name, info in FineTuneJobStatus.model_fields.items()}
    assert guarded == wire - TRAINERS


def test_trainer_patches_only_its_fields() -> None:
    from kubetune_trainer.kube_status import eval_patch, progress_patch
    from kubetune_trainer.progress import StepRecord

    record = StepRecord(1, 2, 0.5, 1.0, 1e-4, 100.0, 3.0)
    assert set(progress_patch(record)) <= TRAINERS
    assert "tasks" in eval_patch({"eval_loss/qa": 1.0})  # under metrics: {"metrics": ...}
