"""Load what `kubetune serve` serves: base model + adapter, merged, then quantized.

`cli.py` (through the app's startup) and the benchmark call `load_model(settings)`. Order: load
the base (fp32 on CPU, bf16 on CUDA), attach the adapter with `kubetune_trainer.methods`, merge
it when the method allows (LoRA; QLoRA is dequantised first), otherwise keep it attached
(bottleneck adapter, prefix-tuning), then quantize (int8) and report the size before and after.
A server with named adapters (`settings.multi_lora`) merges nothing: it gets a `LoraSet` over
the quantized base, and `adapter_registry` loads the adapters onto it once the server runs.
The tokenizer and chat template come from the adapter folder when it has them (the trainer
saves them there), else from the base model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from kubetune_server.adapter_source import resolve_fine_tune_job
from kubetune_server.multi_lora import LoraSet
from kubetune_server.quantize import model_size_bytes, quantize_model
from kubetune_server.remote import local_adapter, local_model
from kubetune_server.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prefix:
    """A prefix-tuning adapter kept unmerged: its key/values start every sequence's cache."""

    peft_model: Any
    num_virtual_tokens: int

    def initial_cache(self, batch_size: int, prompt_len: int) -> Any:
        """A fresh cache holding the learned prefix for `batch_size` rows."""
        return self.peft_model.get_prompt(
            batch_size, max_cache_len=prompt_len + self.num_virtual_tokens
        )


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to generate, with what the engine needs to know about it."""

    model: nn.Module  # a transformers causal LM (forward takes input_ids, mask, positions, cache)
    tokenizer: Any
    device: torch.device
    context_length: int
    eos_ids: frozenset[int]
    pad_id: int
    default_temperature: float
    default_top_p: float
    size_before: int
    size_after: int
    prefix: Prefix | None = None
    notes: str = ""
    lora: LoraSet | None = None  # named LoRA adapters load onto this (multi-LoRA serving)


def pick_device(wanted: str) -> torch.device:
    """cuda when asked for or available (auto), else cpu."""
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def load_model(settings: ServerSettings) -> LoadedModel:
    """Load, merge and quantize the model `settings` describe; logs the size before/after."""
    device = pick_device(settings.device)
    found = settings.adapter
    if found is None and settings.fine_tune_job:
        found = resolve_fine_tune_job(settings.fine_tune_job)
    adapter = local_adapter(found)  # an s3:// adapter or base model: from the local cache
    model_path = local_model(settings.model)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(model_path, adapter))
    model, prefix, notes = _with_adapter(base, adapter)
    before = model_size_bytes(model)
    if settings.quantization == "int8":
        model = quantize_model(model, device)
    model = model.to(device).eval()
    after = model_size_bytes(model)
    lora = LoraSet(model) if settings.multi_lora else None
    log.info(
        "model size: %s (%s) -> %s (%s), %.3fx",
        human_bytes(before),
        str(dtype).removeprefix("torch."),
        human_bytes(after),
        settings.quantization if settings.quantization == "int8" else "unquantized",
        after / before,
    )
    temperature, top_p = _sampling_defaults(model_path)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        context_length=_context_length(base, settings.max_model_len),
        eos_ids=_eos_ids(base, tokenizer),
        pad_id=_pad_id(tokenizer),
        default_temperature=temperature,
        default_top_p=top_p,
        size_before=before,
        size_after=after,
        prefix=prefix,
        notes=notes,
        lora=lora,
    )


def human_bytes(n: int) -> str:
    """`n` bytes with three significant digits: 1.05 MB, 436 MB, 16.4 GB."""
    value, unit = float(n), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{value:.3g} {unit}"


def _tokenizer_source(model: str, adapter: Path | None) -> str:
    if adapter is not None and (adapter / "tokenizer_config.json").is_file():
        return str(adapter)
    return model


def _with_adapter(base: nn.Module, adapter: Path | None) -> tuple[nn.Module, Prefix | None, str]:
    """(model to serve, prefix if prefix-tuning, a note for the log)."""
    if adapter is None:
        return base, None, "no adapter"
    from kubetune_trainer.methods import MergeNotSupportedError, load_adapter, merge_and_unload

    peft_model = load_adapter(base, Path(adapter)).eval()  # type: ignore[arg-type]
    try:
        return merge_and_unload(peft_model), None, f"adapter {adapter} merged"
    except MergeNotSupportedError as err:
        log.info("serving the adapter unmerged: %s", err)
    config = peft_model.active_peft_config
    if config.is_prompt_learning:
        prefix = Prefix(peft_model, int(config.num_virtual_tokens))
        return peft_model, prefix, f"adapter {adapter} attached (prefix-tuning)"
    return peft_model, None, f"adapter {adapter} attached ({config.peft_type})"


def _context_length(base: nn.Module, cap: int | None) -> int:
    native = int(getattr(base.config, "max_position_embeddings", 32768))
    return min(native, cap) if cap else native


def _sampling_defaults(model: str) -> tuple[float, float]:
    """(temperature, top_p) for requests that set none: the model's generation config, as vLLM."""
    try:
        config = GenerationConfig.from_pretrained(model)
    except OSError:
        return 0.0, 1.0
    if not config.do_sample:
        return 0.0, 1.0
    return float(config.temperature or 1.0), float(config.top_p or 1.0)


def _eos_ids(base: nn.Module, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    generation = getattr(base, "generation_config", None)
    for source in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)
