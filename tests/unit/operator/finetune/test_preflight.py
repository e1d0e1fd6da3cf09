"""The memory pre-flight in the reconcile plan: MemoryFits, a Warning, strictPreflight refusal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune_operator.finetune.plan import Observed, Plan, plan_reconcile
from kubetune_operator.finetune.preflight import check_memory, gpu_memory
from kubetune_operator.finetune.validation import parse_spec
from kubetune_operator.settings import Settings

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "model": {"name": "Qwen/Qwen3-8B"},
    "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
    "method": {"type": "lora", "rank": 16},
    "training": {"microBatchSize": 1, "precision": "bf16", "gradientCheckpointing": True},
    "resources": {"gpusPerNode": 1},
    "output": {"pvc": {"claimName": "out"}},
}


def spec(**changes: Any) -> dict[str, Any]:
    out = {**SPEC}
    for key, value in changes.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def plan(raw: dict[str, Any], settings: Settings | None = None, **status: Any) -> Plan:
    body = {
        "metadata": {"name": "faq", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": raw,
        "status": status,
    }
    return plan_reconcile(body, Observed(), settings or Settings(), NOW)


def memory(p: Plan) -> Any:
    return next((c for c in p.status.conditions or [] if c.type == "MemoryFits"), None)


def test_fits_on_an_80gib_gpu() -> None:
    p = plan(spec(resources={"gpuMemory": "80Gi"}))
    cond = memory(p)
    assert cond.status == "True" and cond.reason == "Fits" and "of 80.0 GiB" in cond.message
    assert "InsufficientGPUMemory" not in [e.reason for e in p.events]


def test_too_small_a_gpu_warns_and_still_starts() -> None:
    p = plan(spec(resources={"gpuMemory": "16Gi"}))
    cond = memory(p)
    assert cond.status == "False" and cond.reason == "InsufficientGPUMemory"
    assert "spec.resources.gpuMemory" in cond.message and "weights 15.3" in cond.message
    assert [e.reason for e in p.events] == ["AttemptStarted", "InsufficientGPUMemory"]
    assert any(o["kind"] == "Job" for o in p.apply)


def test_strict_preflight_fails_before_any_pod() -> None:
    p = plan(spec(resources={"gpuMemory": "16Gi"}, strictPreflight=True))
    assert p.status.phase == "Failed" and p.apply == []
    assert "InsufficientGPUMemory" in (p.status.message or "")
    assert "spec.strictPreflight" in (p.status.message or "")
    assert [e.reason for e in p.events] == ["InsufficientGPUMemory"]


def test_the_operator_setting_is_the_default_and_the_spec_wins() -> None:
    settings = Settings(gpu_memory="16Gi")
    assert "the operator's --gpu-memory" in memory(plan(SPEC, settings)).message
    assert memory(plan(spec(resources={"gpuMemory": "80Gi"}), settings)).status == "True"
    assert memory(plan(SPEC)) is None  # neither says: no check


def test_qlora_fits_where_lora_does_not() -> None:
    small = {"gpuMemory": "16Gi"}
    assert memory(plan(spec(resources=small))).status == "False"
    assert memory(plan(spec(resources=small, method={"type": "qlora"}))).status == "True"


def test_an_oom_retry_is_checked_with_its_smaller_micro_batch() -> None:
    parsed = parse_spec(spec(training={"microBatchSize": 8}))
    settings = Settings(gpu_memory="24Gi")  # micro-batch 8: 30.8 GiB; 1: 20.5 GiB
    big = check_memory(parsed, {}, settings)
    small = check_memory(
        parsed, {"microBatchSize": "1", "gradientAccumulationSteps": "8"}, settings
    )
    assert big and small and big.fits is False and small.fits is True


def test_unknown_model_is_unknown_not_an_error() -> None:
    raw = spec(model={"name": "meta-llama/Llama-3-8B"}, resources={"gpuMemory": "80Gi"})
    cond = memory(plan(raw))
    assert cond.status == "Unknown" and cond.reason == "UnknownModel"


def test_cpu_jobs_and_quantities() -> None:
    assert (
        check_memory(
            parse_spec(spec(resources={"gpusPerNode": 0})), {}, Settings("x", gpu_memory="1Gi")
        )
        is None
    )
    assert gpu_memory(parse_spec(spec(resources={"gpuMemory": "81559Mi"})), Settings()) == (
        81559 * 1024**2,
        "spec.resources.gpuMemory",
    )
    with pytest.raises(Exception, match="gpuMemory"):
        parse_spec(spec(resources={"gpuMemory": "lots"}))
