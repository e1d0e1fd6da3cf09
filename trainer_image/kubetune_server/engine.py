"""The generation engine: prompts -> token ids, and a batched, KV-cached decoding loop.

`batching.py` calls `Engine.generate` from its worker thread with a batch of requests; routes call
`chat_prompt_ids` / `text_prompt_ids` to tokenize before queueing. Prompts are left-padded to one
length; the attention mask hides the padding and position ids count only real tokens, so each row
computes what it would alone (exactly, in fp32 on CPU, up to float rounding in attention; the int8
matmuls are integer-exact per row). With named LoRA adapters (`loaded.lora`) each row goes through
its own adapter in the same forward pass (peft's mixed batches). Every row has its own sampler
(built by the caller, so a request with unusable parameters never joins a batch) and stops on its
own: finished rows, and a row whose sampling fails (its finish is that `SamplingError`), leave the
batch and the KV cache. Knows nothing about HTTP or text streaming: tokens go out through the
`emit` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache

from kubetune_server.loading import LoadedModel
from kubetune_server.multi_lora import BASE
from kubetune_server.sampling import RowSampler, SamplingError, SamplingParams, pick_next

FinishReason = Literal["stop", "length"]
Finish = FinishReason | SamplingError  # how each row ended
Emit = Callable[[int, int], bool]  # (row, token id) -> True when that row must stop now


@dataclass(frozen=True)
class GenerationJob:
    """One request's prompt and parameters."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # a named LoRA adapter (public name); None: the base
    canary: bool = False  # the adapter's canary folder rather than its stable one


class Engine:
    """Wraps a loaded model; `generate` is called from one thread at a time."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        model = loaded.model
        # An unmerged peft model: its layers are already inside the base model; the prefix
        # (prefix-tuning) is handled here, through the cache.
        get_base = getattr(model, "get_base_model", None)
        self._net: Any = get_base() if callable(get_base) else model
        self._offset = loaded.prefix.num_virtual_tokens if loaded.prefix else 0
        self.lora = loaded.lora

    def chat_prompt_ids(
        self, messages: list[dict[str, str]], template_kwargs: dict[str, Any] | None = None
    ) -> list[int]:
        """Token ids of `messages` in the chat template, non-thinking unless asked."""
        kwargs = {"enable_thinking": False, **(template_kwargs or {})}
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs
        )
        return self.text_prompt_ids(str(text))

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a raw prompt (no special tokens added)."""
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def max_new_tokens_for(self, prompt_len: int, requested: int) -> int:
        """`requested`, capped by the room left in the context window."""
        return max(0, min(requested, self.context_length - self._offset - prompt_len))

    @torch.inference_mode()
    def generate(
        self,
        jobs: Sequence[GenerationJob],
        emit: Emit,
        samplers: Sequence[RowSampler] | None = None,
        adapters: Sequence[str] | None = None,
    ) -> list[Finish]:
        """Generate every job together; tokens go to `emit`; returns how each job finished.

        `samplers` (one per job) default to fresh ones; building them may raise SamplingError.
        `adapters` (one peft adapter name per job, BASE for none) route each row through its
        LoRA adapter; they default to the base.
        """
        routes = list(adapters) if adapters is not None else [BASE] * len(jobs)
        rows = list(samplers) if samplers is not None else [RowSampler(j.params) for j in jobs]
        finish: list[Finish] = ["length"] * len(jobs)
        produced = [0] * len(jobs)
        active = [i for i, job in enumerate(jobs) if job.params.max_new_tokens > 0]
        if not active:
            return finish
        ids, mask, positions, cache = self._prefill_inputs([jobs[i] for i in active])
        logits = self._forward(ids, mask, positions, cache, [routes[i] for i in active])
        while True:
            picks = pick_next(logits, [rows[i] for i in active])
            keep: list[int] = []
            tokens: list[int] = []
            for j, (row, token) in enumerate(zip(active, picks, strict=True)):
                if isinstance(token, SamplingError):
                    finish[row] = token
                    continue
                eos = token in self.loaded.eos_ids and not jobs[row].params.ignore_eos
                if eos or emit(row, token):
                    finish[row] = "stop"
                    continue
                produced[row] += 1
                if produced[row] < jobs[row].params.max_new_tokens:
                    keep.append(j)
                    tokens.append(token)
            if not keep:
                return finish
            if len(keep) < len(active):
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                active = [active[j] for j in keep]
            ids = torch.tensor(tokens, device=mask.device).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            positions = positions[:, -1:] + 1
            logits = self._forward(ids, mask, positions, cache, [routes[i] for i in active])

    def _prefill_inputs(
        self, jobs: Sequence[GenerationJob]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Left-padded ids, attention mask (with the prefix, if any), positions, and a cache."""
        device = self.loaded.device
        width = max(len(job.prompt_ids) for job in jobs)
        pad = self.loaded.pad_id
        ids = torch.tensor(
            [[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs], device=device
        )
        real = torch.tensor(
            [[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs],
            device=device,
        )
        positions = (real.cumsum(dim=1) - 1).clamp(min=0) + self._offset
        prefix = self.loaded.prefix
        if prefix is None:
            return ids, real, positions, DynamicCache(config=self._net.config)
        cache = prefix.initial_cache(len(jobs), width)
        mask = torch.cat([real.new_ones(len(jobs), prefix.num_virtual_tokens), real], dim=1)
        return ids, mask, positions, cache

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        routes: list[str],
    ) -> torch.Tensor:
        routing = self.lora.routing(routes) if self.lora is not None else nullcontext()
        with routing:
            out = self._net(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :].float()
