"""The training loop: read top to bottom, it is the whole recipe.

    config -> tokenizer, data -> base model + PEFT method -> (FSDP2 shards) -> AdamW + schedule
    -> for each optimizer step: accumulate micro-batches, loss normalised by the target tokens
       of all of them (on all processes) -> clip, step -> log / eval / checkpoint
    -> adapter + summary.json

It knows nothing about Kubernetes: the operator plugs a status reporter into `reporters`.
Called by the CLI (`kubetune train`, `swift-finetune`, the trainer image's entrypoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetune_api import ConfigError, TrainerConfig
from kubetune_trainer import packed_attention
from kubetune_trainer import summary as summary_mod
from kubetune_trainer.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from kubetune_trainer.data import Batch, collate, plan_batches
from kubetune_trainer.distributed import (
    Runtime,
    all_reduce_sum,
    gradient_sync,
    init_runtime,
    shard_model,
    unwrap,
)
from kubetune_trainer.evaluate import evaluate
from kubetune_trainer.failures import NonFiniteLoss, OutOfMemory
from kubetune_trainer.loss import fused_loss
from kubetune_trainer.methods import apply_method, load_base_model, save_adapter, validate_method
from kubetune_trainer.prepare import Prepared, prepare_data
from kubetune_trainer.progress import Reporter, StepRecord
from kubetune_trainer.schedule import build_scheduler

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class RunOptions:
    """How to run (not what to train): resume, device, reporting, test hooks."""

    resume: str = (
        "auto"  # "auto": resume from the output dir's latest checkpoint if any; "never"; or a path
    )
    device: str | None = None  # None: cuda if available, else cpu
    reporters: list[Reporter] = field(default_factory=list)
    stop_after_steps: int | None = None  # simulate preemption after N steps (checkpoint, then stop)
    inject_fault: str | None = None  # "nan:STEP" or "oom:STEP": exercise the failure paths
    keep_checkpoints: int = 2


def _autocast(precision: str, device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    if precision == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=DTYPES[precision])


def _base_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp16" and device.type == "cpu":
        return torch.float32  # CPU fp16 matmuls are slow and lossy; autocast still runs fp16
    return DTYPES[precision]


def build_model(cfg: TrainerConfig, rt: Runtime) -> tuple[nn.Module, Any]:
    """Base model + PEFT method (+ sharding); configuration errors before any weights load."""
    from transformers import AutoConfig

    problems = validate_method(cfg.method, AutoConfig.from_pretrained(cfg.model.name))
    if problems:
        raise ConfigError(problems)
    t = cfg.training
    # Packs attend per example (one sdpa call each) instead of through a dense T x T mask.
    attention = packed_attention.register() if t.dynamic_batching == "packing" else "sdpa"
    base = load_base_model(
        cfg.model.name,
        cfg.method,
        dtype=_base_dtype(t.precision, rt.device),
        device=rt.device,
        attn_implementation=attention,
    )
    model, info = apply_method(base, cfg.method, gradient_checkpointing=t.gradient_checkpointing)
    model.train()
    param_dtype = None if t.precision == "fp32" else DTYPES[t.precision]
    return shard_model(model, rt, t.zero_stage, param_dtype), info


class Loop:
    """One training run's state and steps: data order, optimizer, schedule, loss scaling."""

    def __init__(
        self, cfg: TrainerConfig, opts: RunOptions, rt: Runtime, data: Prepared, model: nn.Module
    ) -> None:
        self.cfg, self.opts, self.rt, self.data = cfg, opts, rt, data
        self.output = Path(cfg.output.path or "output")
        self.t = cfg.training
        self.micro = self.t.resolved_micro_batch(rt.world_size)
        self.accum = self.t.gradient_accumulation_steps
        self.pad_id = int(data.tokenizer.pad_token_id)
        self.lengths = [len(e.input_ids) for e in data.train]
        self.autocast = _autocast(self.t.precision, rt.device)
        self.state = TrainState(learning_rate=self.t.learning_rate)
        self.real_tokens = self.padded_tokens = 0
        self.train_seconds = 0.0
        self.last_loss = float("nan")
        self.first_loss: float | None = None
        self.eval_metrics: dict[str, float] = {}
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=self.t.learning_rate, weight_decay=self.t.weight_decay
        )
        self.total = self.total_steps()
        self.scheduler = build_scheduler(
            self.optimizer, self.total, self.t.warmup_ratio, self.t.scheduler
        )
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=self.t.precision == "fp16")

    # -- data order -----------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Micro-batches of this epoch as indices into `data.train` (a mixture draws a subset)."""
        drawn = self.data.epoch_indices(self.t.seed, epoch)
        plan = plan_batches(
            [self.lengths[i] for i in drawn],
            mode=self.t.dynamic_batching,
            micro_batch_size=self.micro,
            max_tokens=self.t.max_tokens_per_batch,
            seed=self.t.seed,
            epoch=epoch,
        )
        return [[drawn[i] for i in batch] for batch in plan]

    def rank_slots(self, n_batches: int) -> list[int]:
        """This process's micro-batches; -1 marks a no-loss filler so all processes step together."""
        world = self.rt.world_size
        slots = list(range(n_batches)) + [-1] * (-n_batches % world)
        return slots[self.rt.rank :: world]

    def steps_in_epoch(self, n_batches: int) -> int:
        per_rank = -(-n_batches // self.rt.world_size)
        return -(-per_rank // self.accum)

    def total_steps(self) -> int:
        total = sum(self.steps_in_epoch(len(self.epoch_batches(e))) for e in range(self.t.epochs))
        return min(total, self.t.max_steps) if self.t.max_steps else total

    def micro_batch(self, batches: list[list[int]], slot: int) -> Batch:
        batch = collate(
            [self.data.train[i] for i in batches[max(slot, 0)]],
            mode=self.t.dynamic_batching,
            pad_token_id=self.pad_id,
        )
        if slot < 0:
            batch.labels.fill_(-100)
            batch.num_real_tokens = 0
        return batch

    # -- one optimizer step -----------------------------------------------------------------
    def step(self, model: nn.Module, micro_batches: list[Batch]) -> float:
        dev = self.rt.device
        targets = sum(int((b.labels[:, 1:] != -100).sum()) for b in micro_batches)
        total = all_reduce_sum(torch.tensor(float(targets), device=dev), self.rt).item()
        loss_sum = torch.zeros((), device=dev)
        for i, b in enumerate(micro_batches):
            with (
                gradient_sync(model, i == len(micro_batches) - 1),
                self.autocast(),
                fused_loss(
                    model, b.labels.to(dev), self.t.loss_chunk_size, self.t.repetition_penalty
                ) as out,
            ):
                model(
                    input_ids=b.input_ids.to(dev),
                    attention_mask=None if b.attention_mask is None else b.attention_mask.to(dev),
                    position_ids=None if b.position_ids is None else b.position_ids.to(dev),
                    use_cache=False,
                )
            loss = out[0].loss_sum * (self.rt.world_size / max(total, 1.0))
            self.scaler.scale(loss).backward()
            loss_sum += out[0].loss_sum.detach()
            self.real_tokens += b.num_real_tokens
            self.padded_tokens += b.num_padded_tokens
        return all_reduce_sum(loss_sum, self.rt).item() / max(total, 1.0)

    def optimizer_step(self, model: nn.Module) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.t.max_grad_norm > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.t.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints and evaluation ----------------------------------------------------------------
    def save(self, model: nn.Module) -> Path:
        extra = {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
        }
        return save_checkpoint(
            self.output,
            model,
            self.optimizer,
            extra,
            self.state,
            self.rt,
            keep=self.opts.keep_checkpoints,
        )

    def resume(self, model: nn.Module) -> None:
        path: Path | None
        if self.opts.resume == "never":
            return
        path = (
            latest_checkpoint(self.output) if self.opts.resume == "auto" else Path(self.opts.resume)
        )
        if path is None:
            return
        self.state, extra = load_checkpoint(path, model, self.optimizer, self.rt)
        self.scheduler.load_state_dict(extra["scheduler"])
        # The config's learning rate wins over the checkpoint's: the operator divides it by 3 when it
        # retries after a NaN loss, and the schedule's position (step) still comes from the checkpoint.
        self.scheduler.base_lrs = [self.t.learning_rate for _ in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.t.learning_rate
        for group, factor in zip(
            self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = self.t.learning_rate * factor(self.scheduler.last_epoch)
        self.scaler.load_state_dict(extra["scaler"])
        self.real_tokens, self.padded_tokens = extra["real_tokens"], extra["padded_tokens"]

    def run_eval(self, model: nn.Module) -> dict[str, float]:
        """Eval loss, perplexity and accuracy; per task too (`eval_loss/<task>`) for a mixture."""
        if not self.data.eval:
            return {}
        metrics = self._evaluate(model, self.data.eval)
        for task, examples in self.data.eval_by_task().items():
            for key, value in self._evaluate(model, examples).items():
                metrics[f"{key}/{task}"] = value
        self.eval_metrics = metrics
        return metrics

    def _evaluate(self, model: nn.Module, examples: list[Any]) -> dict[str, float]:
        return evaluate(
            model,
            examples,
            micro_batch_size=self.micro,
            pad_token_id=self.pad_id,
            device=self.rt.device,
            autocast=self.autocast(),
            chunk_size=self.t.loss_chunk_size,
        )

    def _maybe_fault(self, step: int, loss: float) -> float:
        kind, _, at = (self.opts.inject_fault or "").partition(":")
        if at and int(at) == step + 1:
            if kind == "nan":
                return float("nan")
            if kind == "oom":
                raise OutOfMemory(f"injected out-of-memory at step {step + 1}", step=step)
        return loss


def run(cfg: TrainerConfig, opts: RunOptions) -> dict[str, Any]:
    """Train, evaluate, save the adapter and summary.json; return the summary."""
    return fit(cfg, opts)[1]


def fit(cfg: TrainerConfig, opts: RunOptions) -> tuple[nn.Module, dict[str, Any]]:
    """`run`, also returning the trained model (tests compare it with the reloaded adapter)."""
    rt = init_runtime(opts.device)
    torch.manual_seed(cfg.training.seed)
    data = prepare_data(cfg)
    model, info = build_model(cfg, rt)
    loop = Loop(cfg, opts, rt, data, model)
    return model, _train(loop, model, info)


def _train(loop: Loop, model: nn.Module, info: Any) -> dict[str, Any]:
    rt, total = loop.rt, loop.total
    loop.resume(model)
    reporter = _main_reporter(loop)
    reporter.on_start(
        total,
        {
            "start_step": loop.state.global_step,
            "world_size": rt.world_size,
            "micro_batch_size": loop.micro,
            "trainable_fraction": info.trainable_fraction,
        },
    )
    last_ckpt: Path | None = None
    try:
        last_ckpt = _epochs(loop, model, total, reporter)
    except NonFiniteLoss as err:
        err.checkpoint = str(latest_checkpoint(loop.output) or "")
        raise
    except torch.OutOfMemoryError as err:
        raise OutOfMemory(
            str(err).splitlines()[0],
            step=loop.state.global_step,
            checkpoint=str(latest_checkpoint(loop.output) or ""),
        ) from err
    if loop.state.global_step < total:  # stopped early on purpose (preemption test)
        return {"stopped_at_step": loop.state.global_step, "checkpoint": str(last_ckpt)}
    loop.run_eval(model)
    return _finish(loop, model, info, total, reporter)


def _main_reporter(loop: Loop) -> Reporter:
    from kubetune_trainer.progress import Reporters

    return Reporters(loop.opts.reporters if loop.rt.is_main else [])


def _epochs(loop: Loop, model: nn.Module, total: int, reporter: Reporter) -> Path | None:
    t, st = loop.t, loop.state
    last: Path | None = None
    while st.global_step < total and st.epoch < t.epochs:
        batches = loop.epoch_batches(st.epoch)
        slots = loop.rank_slots(len(batches))
        for s in range(st.batch_in_epoch, loop.steps_in_epoch(len(batches))):
            started = time.perf_counter()
            micro = [
                loop.micro_batch(batches, slot)
                for slot in slots[s * loop.accum : (s + 1) * loop.accum]
            ]
            loss = loop._maybe_fault(st.global_step, loop.step(model, micro))
            if not torch.isfinite(torch.tensor(loss)):
                raise NonFiniteLoss(
                    f"loss became {loss} at step {st.global_step + 1}", step=st.global_step + 1
                )
            loop.optimizer_step(model)
            loop.train_seconds += time.perf_counter() - started
            st.global_step, st.batch_in_epoch = st.global_step + 1, s + 1
            loop.last_loss = loss
            loop.first_loss = loss if loop.first_loss is None else loop.first_loss
            last = _after_step(loop, model, total, reporter) or last
            if st.global_step >= total or st.global_step == loop.opts.stop_after_steps:
                return loop.save(model) if st.global_step == loop.opts.stop_after_steps else last
        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
    return last


def _after_step(loop: Loop, model: nn.Module, total: int, reporter: Reporter) -> Path | None:
    t, st = loop.t, loop.state
    lr = float(loop.scheduler.get_last_lr()[0])
    if st.global_step % t.logging_steps == 0 or st.global_step == total:
        tok_s = loop.real_tokens / max(loop.train_seconds, 1e-9) if st.global_step else 0.0
        steps_per_epoch = max(1, total // max(t.epochs, 1))
        reporter.on_step(
            StepRecord(
                st.global_step,
                total,
                st.global_step / steps_per_epoch,
                loop.last_loss,
                lr,
                tok_s,
                loop.train_seconds,
            )
        )
    if t.eval_every_steps and st.global_step % t.eval_every_steps == 0 and st.global_step < total:
        metrics = loop.run_eval(model)
        if metrics:
            reporter.on_eval(st.global_step, metrics)
    if t.save_every_steps and st.global_step % t.save_every_steps == 0:
        return loop.save(model)
    return None


def _finish(
    loop: Loop, model: nn.Module, info: Any, total: int, reporter: Reporter
) -> dict[str, Any]:
    adapter_dir = loop.output / "adapter"
    state_dict = _full_trainable_state(model)
    if loop.rt.is_main:
        save_adapter(
            unwrap(model), adapter_dir, tokenizer=loop.data.tokenizer, state_dict=state_dict
        )
    summary = summary_mod.build(loop, info, total, adapter_dir)
    if loop.rt.is_main:
        summary_mod.write(loop.output, summary)
        if loop.eval_metrics:
            reporter.on_eval(loop.state.global_step, loop.eval_metrics)
        reporter.on_end(summary)
    return summary


def _full_trainable_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP2 the adapter weights are sharded: gather them (collective) before saving."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return None
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return dict(get_model_state_dict(model, options=opts))  # type: ignore[arg-type]
