"""Prometheus metrics of the operator: FineTuneJobs by phase, reconcile latency and errors.

    kubetune_finetunejobs{phase}                        gauge, from the watch stream
    kubetune_operator_reconcile_duration_seconds{trigger}  histogram
    kubetune_operator_reconcile_errors_total{reason}    counter
plus the process collector (resident memory, CPU). One registry per operator, no module
globals; `serve` exposes it on /metrics. Fed by `finetune.handlers` (phases from the watch),
`runner` (latency and errors of FineTuneJob runs) and `finetune.reconcile` (phase after a run).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

PHASES = ("Pending", "Running", "Retrying", "Succeeded", "Failed", "Suspended")
Key = tuple[str, str]


class _PhaseCollector(Collector):
    def __init__(self, phases: dict[Key, str]) -> None:
        self.phases = phases

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kubetune_finetunejobs",
            "FineTuneJobs by phase (Unknown: no status yet).",
            labels=["phase"],
        )
        counts = Tally(self.phases.values())
        for phase in (*PHASES, "Unknown"):
            family.add_metric([phase], counts.get(phase, 0))
        yield family


class OperatorMetrics:
    """The operator's metrics and the phase of every FineTuneJob it has seen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.phases: dict[Key, str] = {}
        self.reconcile_seconds = Histogram(
            "kubetune_operator_reconcile_duration_seconds",
            "Time to reconcile one FineTuneJob (read, plan, apply, patch status).",
            ["trigger"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reconcile_errors = Counter(
            "kubetune_operator_reconcile_errors_total",
            "Reconciles that failed, by reason (HTTP reason or exception type).",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_PhaseCollector(self.phases))
        ProcessCollector(registry=self.registry)

    def observe_phase(self, key: Key, phase: str | None, deleted: bool = False) -> None:
        if deleted:
            self.phases.pop(key, None)
        else:
            self.phases[key] = phase or "Unknown"

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)
