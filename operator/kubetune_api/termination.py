"""The trainer/operator termination contract: exit codes, reasons, and the one-line JSON.

A trainer pod ends with an exit code and a one-line JSON object in its termination file
(`/dev/termination-log`, which Kubernetes copies into the container's terminated state). The
trainer writes it (`kubetune_trainer.failures`); the operator reads it back with
`TerminationReason.parse` and decides whether to retry (OutOfMemory: smaller micro-batch;
NaNLoss: lower learning rate from the last good checkpoint; Preempted: the pod was asked to stop,
wrote a checkpoint and exited, a disruption rather than a failure of the run) or fail. A run that succeeds writes
a line too (reason `Succeeded`, with its final eval and train loss): the operator reads a
search trial's result from it. Both sides use this module, so the contract is written once.
Imports nothing outside the standard library.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import IntEnum

MAX_MESSAGE_BYTES = 4096  # the kubelet keeps at most 4096 bytes of a termination message
SUCCEEDED = "Succeeded"
PREEMPTED = "Preempted"  # not a failure of the run: a disruption, resumed from its checkpoint


class ExitCode(IntEnum):
    """Process exit codes; the operator maps them (and the JSON reason) to retries."""

    SUCCESS = 0
    ERROR = 1
    INVALID_CONFIG = 2
    INVALID_DATA = 3
    OUT_OF_MEMORY = 4
    NAN_LOSS = 5
    PREEMPTED = 6  # SIGTERM (pod deletion, eviction, preemption): checkpoint written, then exit


REASONS = {
    ExitCode.ERROR: "Error",
    ExitCode.INVALID_CONFIG: "InvalidConfig",
    ExitCode.INVALID_DATA: "InvalidData",
    ExitCode.OUT_OF_MEMORY: "OutOfMemory",
    ExitCode.NAN_LOSS: "NaNLoss",
    ExitCode.PREEMPTED: PREEMPTED,
}
# The reason of an exit code whose termination message is missing or not ours (exit 1 is left
# out: a plain error says nothing a retry policy could use).
EXIT_REASONS = {int(code): reason for code, reason in REASONS.items() if code != ExitCode.ERROR}


@dataclass
class TerminationReason:
    """The JSON object written to the termination file."""

    reason: str
    message: str = ""
    exitCode: int | None = None
    step: int | None = None
    checkpoint: str | None = None
    evalLoss: float | None = None
    trainLoss: float | None = None
    adapterUri: str | None = None  # Succeeded: where the adapter is (uploaded, when s3://)
    adapterBytes: int | None = None
    adapterSha256: str | None = None  # content hash over its files (names, sizes, sha256s)

    def to_json(self) -> str:
        """The line to write, cut to fit the kubelet's 4096 bytes (the message is shortened)."""
        text = json.dumps(
            {k: v for k, v in asdict(self).items() if v is not None}, ensure_ascii=False
        )
        if len(text.encode()) <= MAX_MESSAGE_BYTES:
            return text
        self.message = self.message[: MAX_MESSAGE_BYTES // 2] + "…"
        return self.to_json()

    @classmethod
    def parse(cls, text: str | None) -> TerminationReason | None:
        """Read a termination message back; None if it is missing or not ours."""
        try:
            data = json.loads(text or "")
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None
