"""Operator settings: the trainer image, GPU tolerations and pod defaults, from flags or env.

`Settings.from_env` reads `KUBETUNE_TRAINER_IMAGE`, `KUBETUNE_SERVER_IMAGE` (ModelDeployment
pods; default: the trainer image, which is the runtime image), `KUBETUNE_GPU_TOLERATIONS` (a JSON
list of tolerations), `KUBETUNE_GPU_MEMORY` (one GPU's memory for the pre-flight, e.g.
80Gi), `KUBETUNE_TERMINATION_GRACE_SECONDS` (how long a trainer pod has after SIGTERM to write
its checkpoint; a FineTuneJob's spec.resources.terminationGracePeriodSeconds wins) and
`KUBETUNE_POD_NETWORKS` (comma-separated CIDRs of the server pod IPs the operator may connect to
for their adapter state, GET /adapterz; unset: any) and `KUBETUNE_ADAPTER_POLL_SECONDS` (how
often they are asked while an adapter is unsettled; default 10); the CLI overrides them with its
flags.
The builders receive a `Settings` and never read the environment themselves, so they stay pure.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"
DEFAULT_GPU_TOLERATIONS: tuple[dict[str, Any], ...] = (
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)


@dataclass(frozen=True)
class Settings:
    """What the operator needs besides a FineTuneJob's spec to build its children."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    gpu_tolerations: tuple[dict[str, Any], ...] = DEFAULT_GPU_TOLERATIONS
    image_pull_policy: str = "IfNotPresent"
    master_port: int = 29500  # torchrun rendezvous port on pod 0 of multi-node jobs
    run_as_user: int = 1000  # the trainer image's non-root user
    extra_env: tuple[tuple[str, str], ...] = field(default=())
    server_image: str | None = None  # ModelDeployment servers/router; None: the trainer image
    gpu_memory: str | None = None  # one GPU's memory (e.g. 80Gi) for the pre-flight; None: skip
    # Seconds between SIGTERM and SIGKILL of a trainer pod: enough to finish the step and write
    # a checkpoint of a LoRA adapter and its optimizer state (seconds even for Qwen3-32B ranks).
    termination_grace_seconds: int = 120
    # Server pods whose IP lies outside these networks are never contacted for their adapter
    # state (reported Unknown); empty: any pod IP. A cluster whose pod IPs the operator cannot
    # or must not reach (the local cluster's kwok pods have made-up IPs) lists the reachable ones.
    pod_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    adapter_poll_seconds: float = 10.0  # how often named adapters' pods are asked while unsettled

    @property
    def runtime_image(self) -> str:
        """The image of `kubetune serve` / `kubetune route` pods (the runtime image)."""
        return self.server_image or self.trainer_image

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults, overridden by the KUBETUNE_* variables above."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        if env.get("KUBETUNE_TRAINER_IMAGE"):
            kwargs["trainer_image"] = env["KUBETUNE_TRAINER_IMAGE"]
        if env.get("KUBETUNE_SERVER_IMAGE"):
            kwargs["server_image"] = env["KUBETUNE_SERVER_IMAGE"]
        if env.get("KUBETUNE_GPU_MEMORY"):
            kwargs["gpu_memory"] = env["KUBETUNE_GPU_MEMORY"]
        if env.get("KUBETUNE_TERMINATION_GRACE_SECONDS"):
            kwargs["termination_grace_seconds"] = int(env["KUBETUNE_TERMINATION_GRACE_SECONDS"])
        if env.get("KUBETUNE_GPU_TOLERATIONS"):
            kwargs["gpu_tolerations"] = parse_tolerations(env["KUBETUNE_GPU_TOLERATIONS"])
        if env.get("KUBETUNE_POD_NETWORKS"):
            kwargs["pod_networks"] = parse_networks(env["KUBETUNE_POD_NETWORKS"])
        if env.get("KUBETUNE_ADAPTER_POLL_SECONDS"):
            kwargs["adapter_poll_seconds"] = float(env["KUBETUNE_ADAPTER_POLL_SECONDS"])
        return cls(**kwargs)

    def may_contact(self, ip: str) -> bool:
        """Whether the operator may connect to a pod at `ip` (pod_networks)."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return not self.pod_networks or any(address in net for net in self.pod_networks)


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (e.g. `10.251.7.0/24,fd00::/64`); ValueError naming a bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as err:
            raise ValueError(f"pod networks: {item!r} is not a CIDR ({err})") from None
    return tuple(networks)


def parse_tolerations(text: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of core/v1 tolerations; raises ValueError naming the problem."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"GPU tolerations must be a JSON list: {err}") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"GPU tolerations must be a JSON list of objects, got {text!r}")
    return tuple(value)
