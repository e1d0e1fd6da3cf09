"""The training loop: read top to bottom, it is the whole recipe.

    config -> which run (identity: a foreign output folder is refused) -> tokenizer, data
    -> base model + PEFT method -> (FSDP2 shards) -> AdamW + schedule -> resume (same run only)
    -> for each optimizer step of the run's fixed plan (`order`): accumulate this attempt's
       micro-batches, loss normalised by the target tokens of all of them (on all processes)
       -> clip, step -> log / eval -> all processes vote (SIGTERM? timer?) -> checkpoint every
       saveEverySteps, every checkpointEveryMinutes, after the last step and on SIGTERM (then
       exit 6 Preempted)
    -> adapter + summary.json
    An s3:// output (`storage.mirror`) is the local folder mirrored up: the newest complete
    checkpoint at the URI is restored first, each checkpoint uploads in a background thread,
    and the adapter and summary upload at the end; a failed upload fails the run.

It knows nothing about Kubernetes: the operator plugs a status reporter into `reporters`.
Called by the CLI (`kubetune train`, `swift-finetune`, the trainer image's entrypoint).
"""

from __future__ import annotations

import math
import sys
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
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from kubetune_trainer.data import Batch
from kubetune_trainer.data.steps import Step, step_at
from kubetune_trainer.distributed import (
    Runtime,
    all_reduce_sum,
    barrier,
    gradient_sync,
    init_runtime,
    shard_model,
    unwrap,
)
from kubetune_trainer.evaluate import evaluate
from kubetune_trainer.failures import NonFiniteLoss, OutOfMemory, Preempted
from kubetune_trainer.identity import RunRecord, check_resumable, claim_output, commit_claim
from kubetune_trainer.loss import fused_loss
from kubetune_trainer.methods import apply_method, load_base_model, save_adapter, validate_method
from kubetune_trainer.order import DataOrder, reference_of
from kubetune_trainer.preemption import Agreement, sigterm_stops
from kubetune_trainer.prepare import Prepared, prepare_data
from kubetune_trainer.progress import Reporter, StepRecord
from kubetune_trainer.schedule import build_scheduler
from kubetune_trainer.sources import localize
from kubetune_trainer.storage.mirror import OutputMirror

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class RunOptions:
    """How to run (not what to train): resume, device, reporting, test hooks."""

    resume: str = "auto"  # "auto": the output dir's latest checkpoint; "never"; or a path
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
    cfg = resolve_defaults(cfg, rt)[0]  # no-op when `fit` resolved them already
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
    checkpointing = t.gradient_checkpointing is True  # resolved above: never "auto" here
    model, info = apply_method(base, cfg.method, gradient_checkpointing=checkpointing)
    model.train()
    param_dtype = None if t.precision == "fp32" else DTYPES[t.precision]
    return shard_model(model, rt, t.zero_stage, param_dtype), info


def build_optimizer(params: list[nn.Parameter], t: Any, rt: Runtime) -> torch.optim.Optimizer:
    """AdamW, one fused kernel over all adapter tensors (CPU and CUDA); under FSDP2 (DTensor
    parameters) the multi-tensor `foreach` form. Same update as the per-tensor loop, fewer ops."""
    fused = not rt.distributed and rt.device.type in ("cpu", "cuda")
    fused = fused and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    return torch.optim.AdamW(
        params,
        lr=t.learning_rate,
        weight_decay=t.weight_decay,
        fused=fused or None,
        foreach=None if fused else True,
    )


def output_of(cfg: TrainerConfig) -> Path:
    """The local output folder: output.path, a file:// uri's path, a staging folder in the
    download cache for an s3:// uri without a path, else ./output."""
    out = cfg.output
    if out.path:
        return Path(out.path)
    if out.uri and out.uri.startswith("file://"):
        return Path(out.uri.removeprefix("file://"))
    if out.uri:
        from kubetune_trainer.storage.transfer import cache_root

        return cache_root() / "outputs" / out.uri.removeprefix("s3://")
    return Path("output")


def open_mirror(cfg: TrainerConfig, opts: RunOptions, rt: Runtime) -> OutputMirror | None:
    """The s3:// output's mirror (main process only), with its newest checkpoint restored."""
    uri = cfg.output.uri
    if not uri or not uri.startswith("s3://") or not rt.is_main:
        return None
    mirror = OutputMirror(output_of(cfg), uri, keep=opts.keep_checkpoints)
    if opts.resume == "auto":
        mirror.restore()
    return mirror


class Loop:
    """One training run's state and steps: data order, optimizer, schedule, loss scaling."""

    def __init__(
        self,
        cfg: TrainerConfig,
        opts: RunOptions,
        rt: Runtime,
        data: Prepared,
        model: nn.Module,
        record: RunRecord | None = None,
        mirror: OutputMirror | None = None,
    ) -> None:
        cfg = resolve_defaults(cfg, rt, data)[0]  # no-op when `fit` resolved them already
        self.cfg, self.opts, self.rt, self.data = cfg, opts, rt, data
        self.mirror = mirror
        self.output = output_of(cfg)
        self.t = cfg.training
        here = reference_of(cfg, rt)
        self.record = record or claim_output(self.output, cfg, here, resume=opts.resume)
        self.micro, self.accum = here.micro_batch_size, here.accumulation
        self.pad_id = int(data.tokenizer.pad_token_id)
        self.order = DataOrder(data, self.t, self.record.plan_reference, self.micro, rt)
        self.autocast = _autocast(self.t.precision, rt.device)
        self.state = TrainState(learning_rate=self.t.learning_rate)
        self.saved_step = -1
        self.resumed_from = 0
        self.agreement = Agreement(rt, self.t.checkpoint_every_minutes)
        self.real_tokens = self.padded_tokens = 0
        self.largest_micro = 0  # token slots of this attempt's largest micro-batch
        self.train_seconds = 0.0
        self.last_loss = float("nan")
        self.first_loss: float | None = None
        self.eval_metrics: dict[str, float] = {}
        self.resolved: dict[str, Any] = {}  # the `auto` settings resolved at start (`hardware`)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, self.t, rt)
        self.total = self.order.total_steps()
        self.scheduler = build_scheduler(
            self.optimizer, self.total, self.t.warmup_ratio, self.t.scheduler
        )
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=self.t.precision == "fp16")

    # -- data order (kubetune_trainer.order) -------------------------------------------------
    def epoch_steps(self, epoch: int) -> list[Step]:
        return self.order.epoch_steps(epoch)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return self.order.epoch_batches(epoch)

    def micro_batch(self, batches: list[list[int]], slot: int) -> Batch:
        return self.order.micro_batch(batches, slot)

    def accounting(self) -> dict[str, Any]:
        """For the summary: examples per epoch (and whether each was trained once), the run."""
        return {
            **self.order.accounting(self.state),
            "run_id": self.record.run_id,
            "resumed_from_step": self.resumed_from,
            "largest_micro_batch_tokens": self.largest_micro,
        }

    # -- one optimizer step -----------------------------------------------------------------
    def step(self, model: nn.Module, micro_batches: list[Batch]) -> float:
        dev = self.rt.device
        targets = sum(b.num_target_tokens for b in micro_batches)  # counted at collation
        total = float(targets)
        if self.rt.distributed:  # the only host sync besides the step's loss
            total = all_reduce_sum(torch.tensor(total, device=dev), self.rt).item()
        loss_sum = torch.zeros((), device=dev)
        for i, b in enumerate(micro_batches):
            with (
                gradient_sync(model, i == len(micro_batches) - 1),
                self.autocast(),
                fused_loss(
                    model,
                    b.labels.to(dev),
                    self.t.loss_chunk_size,
                    self.t.repetition_penalty,
                    count_correct=False,
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
            self.largest_micro = max(self.largest_micro, b.num_padded_tokens)
        return all_reduce_sum(loss_sum, self.rt).item() / max(total, 1.0)

    def optimizer_step(self, model: nn.Module) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.t.max_grad_norm, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints and evaluation ----------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What a checkpoint records about the run it belongs to (`identity` rule 2)."""
        r = self.record
        return {
            "run_id": r.run_id,
            "config": r.config,
            "config_hash": r.config_hash,
            "data_hash": self.data.data_hash,
        }

    def save(self, model: nn.Module) -> Path:
        """Checkpoint now (collective), unless this step is saved already."""
        if self.saved_step == self.state.global_step:
            return checkpoint_dir(self.output, self.saved_step)
        extra = {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
        }
        self.state.run = self.identity()
        path = save_checkpoint(
            self.output,
            model,
            self.optimizer,
            extra,
            self.state,
            self.rt,
            keep=self.opts.keep_checkpoints,
        )
        self.saved_step = self.state.global_step
        self.agreement.saved()
        if self.mirror is not None:
            self.mirror.checkpoint(path)  # uploads in the background; raises an earlier failure
        return path

    def _checkpoint_to_resume(self) -> Path | None:
        if self.opts.resume == "never":
            return None
        if self.opts.resume == "auto":
            return latest_checkpoint(self.output)
        path = Path(self.opts.resume)
        if not (path / "state.json").exists():
            raise ConfigError([f"--resume: no checkpoint at {path} (no state.json)"])
        return path

    def resume(self, model: nn.Module) -> None:
        """Restore the checkpoint this run resumes from, if any (identity rules 2 and 3)."""
        path = self._checkpoint_to_resume()
        if path is None:
            return
        saved = read_state(path)
        check_resumable(
            path, saved.run, self.record, self.data.data_hash, check_run=self.opts.resume == "auto"
        )
        try:
            if saved.epoch < self.t.epochs:
                step_at(self.epoch_steps(saved.epoch), saved.cursor)
        except ValueError as err:
            raise ConfigError([f"checkpoint {path} cannot resume this run: {err}"]) from None
        self.state, extra = load_checkpoint(path, model, self.optimizer, self.rt)
        self.saved_step = self.resumed_from = self.state.global_step
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
    with sigterm_stops():
        mirror = open_mirror(cfg, opts, rt)
        try:
            # Which run this is, before any data or weights load: a foreign output folder is
            # refused. The identity keeps the config as written (s3:// URIs, not cache paths).
            record = claim_output(output_of(cfg), cfg, reference_of(cfg, rt), resume=opts.resume)
            torch.manual_seed(cfg.training.seed)
            local = localize(cfg)
            data = prepare_data(local)
            local, resolved = resolve_defaults(local, rt, data)
            cfg = cfg.model_copy(update={"training": local.training})
            model, info = build_model(local, rt)
            loop = Loop(cfg, opts, rt, data, model, record, mirror)
            loop.resolved = resolved
            return model, _train(loop, model, info)
        finally:
            if mirror is not None:
                mirror.close()  # a failed or preempted run still uploads its last checkpoint


def resolve_defaults(
    cfg: TrainerConfig, rt: Runtime, data: Prepared | None = None
) -> tuple[TrainerConfig, dict[str, Any]]:
    """`precision: auto` and `gradientCheckpointing: auto` for this machine, once (`hardware`);
    printed on the main process. Without `data` the longest example is the configured maximum."""
    from transformers import AutoConfig

    from kubetune_trainer import hardware

    t = cfg.training
    if t.precision != "auto" and t.gradient_checkpointing != "auto":
        return cfg, {}
    if data is not None and data.train:
        seq = max(len(e.input_ids) for e in data.train)
    else:
        seq = cfg.dataset.max_input_tokens + cfg.dataset.max_target_tokens
    model_config = AutoConfig.from_pretrained(cfg.model.name).to_dict()
    resolved_cfg, resolved = hardware.resolve_defaults(cfg, rt.device, model_config, seq)
    if rt.is_main:
        print(f"kubetune: {hardware.describe(resolved)}", file=sys.stderr, flush=True)
    return resolved_cfg, resolved


def _train(loop: Loop, model: nn.Module, info: Any) -> dict[str, Any]:
    rt, total = loop.rt, loop.total
    loop.resume(model)
    if rt.is_main:
        commit_claim(loop.output, loop.record, resume=loop.opts.resume)
        if loop.mirror is not None:
            loop.mirror.put_run_file()
    barrier(rt)
    reporter = _main_reporter(loop)
    reporter.on_start(
        total,
        {
            "start_step": loop.state.global_step,
            "world_size": rt.world_size,
            "micro_batch_size": loop.micro,
            "gradient_accumulation_steps": loop.accum,
            "trainable_fraction": info.trainable_fraction,
            "resolved_defaults": {k: v["value"] for k, v in loop.resolved.items()},
        },
    )
    try:
        _epochs(loop, model, total, reporter)
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
        return {
            "stopped_at_step": loop.state.global_step,
            "checkpoint": str(latest_checkpoint(loop.output)),
        }
    loop.run_eval(model)
    return _finish(loop, model, info, total, reporter)


def _main_reporter(loop: Loop) -> Reporter:
    from kubetune_trainer.progress import Reporters

    return Reporters(loop.opts.reporters if loop.rt.is_main else [])


def _epochs(loop: Loop, model: nn.Module, total: int, reporter: Reporter) -> None:
    t, st = loop.t, loop.state
    if loop.agreement.poll().stop:  # SIGTERM while the data or the model loaded
        _preempt(loop, model)
    while st.global_step < total and st.epoch < t.epochs:
        steps = loop.epoch_steps(st.epoch)
        for k in range(step_at(steps, st.cursor), len(steps)):
            started = time.perf_counter()
            batches = loop.order.step_batches(steps[k])
            loss = loop._maybe_fault(st.global_step, loop.step(model, batches))
            if not math.isfinite(loss):
                raise NonFiniteLoss(
                    f"loss became {loss} at step {st.global_step + 1}", step=st.global_step + 1
                )
            loop.optimizer_step(model)
            loop.train_seconds += time.perf_counter() - started
            loop.order.advance(st, steps, k)
            loop.last_loss = loss
            loop.first_loss = loss if loop.first_loss is None else loop.first_loss
            _after_step(loop, model, total, reporter)
            if st.global_step >= total or st.global_step == loop.opts.stop_after_steps:
                return


def _preempt(loop: Loop, model: nn.Module) -> None:
    """Checkpoint (every process), then leave with reason Preempted."""
    path = loop.save(model) if loop.state.global_step > 0 else None
    step = loop.state.global_step
    where = f"checkpoint {path}" if path else "nothing trained yet"
    raise Preempted(
        f"asked to stop (SIGTERM) after step {step}; {where}: resume from it",
        step=step,
        checkpoint=str(path or ""),
    )


def _after_step(loop: Loop, model: nn.Module, total: int, reporter: Reporter) -> None:
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
    vote = loop.agreement.poll()  # collective: every process, every step
    every = bool(t.save_every_steps) and st.global_step % (t.save_every_steps or 1) == 0
    last = st.global_step in (total, loop.opts.stop_after_steps)
    if every or last or vote.timer_due or vote.stop:
        loop.save(model)
    if vote.stop:
        _preempt(loop, model)


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
        summary.update(summary_mod.adapter_facts(adapter_dir, loop.cfg.output.uri))
        summary_mod.write(loop.output, summary)
        if loop.mirror is not None:
            loop.mirror.finish(adapter_dir)
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
