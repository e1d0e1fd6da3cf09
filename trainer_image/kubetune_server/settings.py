"""Settings of `kubetune serve` and `kubetune route`: pydantic models filled from flags and env.

`cli.py` and `router_cli.py` build these from their flags; anything a flag leaves unset may come
from a `KUBETUNE_*` environment variable (the operator sets env, a person types flags). The API
key is never a flag value: it is read from `--api-key-file` or `KUBETUNE_API_KEY` (set from a
Secret), so it does not show up in `ps`. Defaults match the ModelDeployment schema's `spec.server`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Quantization = Literal["int8", "none"]
Strategy = Literal["complexity", "weighted", "single"]

API_KEY_ENV = "KUBETUNE_API_KEY"
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_BODY_BYTES = 8 * 1024 * 1024  # a 128k-token prompt is about 0.5-1 MB of JSON
MAX_PROMPT_CHARS = (
    500_000  # ~4x what fills Qwen3's 32k context with English text (~1 s to tokenize)
)


class ServerSettings(BaseModel):
    """Everything the inference server needs to know, validated once at startup."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(
        min_length=1, description="base model: a local path, a hub id, or an s3:// prefix"
    )
    adapter: Path | str | None = Field(
        default=None, description="PEFT adapter folder to merge (a local path or an s3:// prefix)"
    )
    fine_tune_job: str | None = Field(
        default=None, description="FineTuneJob whose adapter to serve"
    )
    served_model_name: str | None = Field(default=None, description="name in /v1/models")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="named LoRA adapters: name -> folder (multi-LoRA)"
    )
    adapter_config: Path | None = Field(
        default=None, description="JSON file {name: folder} of adapters, watched while serving"
    )
    enable_adapter_admin: bool = Field(
        default=False, description="POST/DELETE /v1/adapters load and unload adapters at run time"
    )
    adapter_poll_s: float = Field(default=2.0, gt=0, description="adapter config file poll period")
    quantization: Quantization = "int8"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_new_tokens: int = Field(default=512, ge=1, le=32768)
    max_queue: int = Field(default=64, ge=1, le=10000)
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000, description="batch collection window")
    max_model_len: int | None = Field(
        default=None, ge=2, description="context cap below the model's (prompt + generated)"
    )
    max_body_bytes: int = Field(
        default=MAX_BODY_BYTES, ge=1024, description="request bodies past this are a 413"
    )
    max_prompt_chars: int = Field(
        default=MAX_PROMPT_CHARS, ge=1, description="prompt characters refused before tokenizing"
    )
    api_key: str | None = Field(default=None, repr=False)
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads (None: torch's)")

    @model_validator(mode="after")
    def _one_adapter_mode(self) -> ServerSettings:
        if self.adapter is not None and self.fine_tune_job:
            raise ValueError("give --adapter DIR or --fine-tune-job, not both")
        if self.multi_lora and (self.adapter is not None or self.fine_tune_job):
            raise ValueError(
                "--adapter NAME=DIR / --adapter-config serve unmerged LoRA adapters by name; "
                "they cannot be combined with a merged --adapter DIR or --fine-tune-job"
            )
        for name in self.adapters:
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(f"--adapter name must match {ADAPTER_NAME.pattern}, got {name!r}")
        return self

    @property
    def multi_lora(self) -> bool:
        """Whether named LoRA adapters are served (unmerged, on the INT8 base)."""
        return bool(self.adapters) or self.adapter_config is not None or self.enable_adapter_admin

    @property
    def model_name(self) -> str:
        """The id clients see in /v1/models and in responses."""
        if self.served_model_name:
            return self.served_model_name
        if self.fine_tune_job:
            return self.fine_tune_job
        source = str(self.adapter if self.adapter is not None else self.model).rstrip("/")
        return Path(source.removeprefix("s3://")).name or source


class RouterSettings(BaseModel):
    """The router's backends and policy."""

    model_config = ConfigDict(frozen=True)

    backends: dict[str, str] = Field(min_length=1, description="name -> base URL")
    strategy: Strategy = "complexity"
    threshold: float = Field(default=0.5, ge=0, le=1)
    large: str = "large"
    small: str = "small"
    default: str | None = None
    weights: dict[str, float] | None = None
    adapter_backends: dict[str, str] = Field(
        default_factory=dict, description="adapter name -> the backend that serves it"
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = Field(default=None, repr=False)
    backend_api_key: str | None = Field(default=None, repr=False)
    max_body_bytes: int = Field(
        default=MAX_BODY_BYTES, ge=1024, description="request bodies past this are a 413"
    )
    timeout_s: float = Field(default=300.0, gt=0)


def read_api_key(path: Path | None) -> str | None:
    """The bearer token from `path`, else from $KUBETUNE_API_KEY; None means no key is needed."""
    if path is not None:
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"--api-key-file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def env_default(name: str, fallback: str | None = None) -> str | None:
    """`KUBETUNE_<NAME>` from the environment, else `fallback` (flag defaults use this)."""
    return os.environ.get(f"KUBETUNE_{name}", fallback)
