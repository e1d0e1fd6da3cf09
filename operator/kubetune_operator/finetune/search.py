"""The plan of a FineTuneJob with `spec.search`: a hyperparameter search run as trial Jobs. Pure.

    room for a trial        -> start one (at most search.parallelTrials at once, search.trials in
                               all) with values from TPE given the trials before it
    a trial's Job finished  -> record its final eval loss (the `Succeeded` line the trainer writes
                               to its termination log) or its failure reason; a failed trial is
                               not retried, TPE learns that it failed
    spec.suspend            -> delete the running trials' Jobs; resuming re-creates them, and the
                               trainer resumes each from its checkpoints
    a trial still Pending after spec.pendingTimeoutSeconds -> the job fails with the reason
    every trial ended       -> Succeeded with the best trial's adapter as `status.output`, or
                               Failed when no trial succeeded
Every trial is recorded in `status.trials` (values, result, eval loss); `status.progress`
counts the ended trials and `status.metrics.evalLoss` is the best so far (a trial pod reports
nothing into the status itself). A trial's values also ride on its Job as an annotation, so a
status patch lost to a crash re-plans the same trial. Median pruning is `kubetune tune`'s
alone: on Kubernetes each trial runs to its end. Called by `plan`.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from kubetune_api.extras import SEARCH_PARAMS as PARAMS
from kubetune_api.extras import FloatRange, SearchSpec
from kubetune_api.status import FineTuneJobStatus, Metrics, OutputStatus, Progress, Trial
from kubetune_operator import names
from kubetune_operator.finetune.build.children import build_trial_children
from kubetune_operator.finetune.build.config import trial_subdir
from kubetune_operator.finetune.build.mounts import adapter_location
from kubetune_operator.finetune.observe import (
    PENDING_REASONS,
    Observation,
    observe_attempt,
    succeeded_eval_loss,
)
from kubetune_operator.finetune.plan_types import Context, Plan, pending_left
from kubetune_operator.status import (
    Event,
    parse_time,
    set_condition,
    shorten,
    suspended_conditions,
    timestamp,
)

if TYPE_CHECKING:
    from kubetune_api.search.sampler import PastTrial

Json = dict[str, Any]
Params = dict[str, Any]  # search.space field (learning_rate, ...) -> value
STATUS_KEYS = ("progress", "metrics", "trials", "bestTrial")  # the operator's, in a search
WIRE_TO_FIELD = {wire: name for name, (_, wire) in PARAMS.items()}


def plan_search(ctx: Context, status: FineTuneJobStatus) -> Plan:
    """The plan for a search FineTuneJob that has not ended. A trial Job Kueue evicted ends the
    trial (Preempted) and is deleted: left suspended, Kueue would admit and run it again."""
    running = _running(list(status.trials or []))
    evicted = [t.job_name for t in running if _observe(ctx, t)[0].evicted]
    plan = _plan_search(ctx, status)
    plan.delete_jobs = [*plan.delete_jobs, *(j for j in evicted if j not in plan.delete_jobs)]
    return plan


def _plan_search(ctx: Context, status: FineTuneJobStatus) -> Plan:
    search = ctx.spec.search
    assert search is not None
    trials, events = _close_finished(ctx, list(status.trials or []))
    if ctx.spec.suspend:
        return _suspended(ctx, status, trials, events)
    stuck = next((t for t in _running(trials) if _pending_too_long(ctx, t)), None)
    if stuck is not None:
        return _timed_out(ctx, status, trials, stuck, events)
    trials, started = _start_trials(ctx, search, trials)
    events += [Event("Normal", "TrialStarted", _started(t)) for t in started]
    if len(trials) == search.trials and not _running(trials):
        return _finished(ctx, status, trials, events)
    plan = Plan(_searching(ctx, status, trials), events=events, status_keys=STATUS_KEYS)
    plan.apply = _children(ctx, _running(trials), {t.index for t in started})
    plan.requeue_after = _pending_left(ctx, trials)
    return plan


# -- trials -------------------------------------------------------------------------------------


def _running(trials: list[Trial]) -> list[Trial]:
    return [t for t in trials if t.result is None]


def _observe(ctx: Context, trial: Trial) -> tuple[Observation, Json | None, list[Json]]:
    job = next((j for j in ctx.observed.jobs if j.get("trial") == trial.index), None)
    pods = [p for p in ctx.observed.pods if p.get("trial") == trial.index]
    obs = observe_attempt(job, pods, ctx.spec.resources.nodes, ctx.observed.workload(job))
    return obs, job, pods


def _close_finished(ctx: Context, trials: list[Trial]) -> tuple[list[Trial], list[Event]]:
    """Trials whose Job ended get their result; one Event each."""
    out, events = [], []
    for trial in trials:
        if trial.result is not None:
            out.append(trial)
            continue
        obs, _, pods = _observe(ctx, trial)
        if obs.state not in ("Succeeded", "Failed"):
            out.append(trial)
            continue
        ended = _ended(trial, obs, pods, ctx)
        out.append(ended)
        if ended.result == "Succeeded":
            text = (
                f"Trial {trial.index} succeeded: eval loss {ended.eval_loss:.4f} ({_values(trial)})"
            )
            events.append(Event("Normal", "TrialSucceeded", text))
        else:
            text = f"Trial {trial.index} failed: {ended.result}: {ended.message or ''}"
            events.append(Event("Warning", "TrialFailed", shorten(text, 1000)))
    return out, events


def _ended(trial: Trial, obs: Observation, pods: list[Json], ctx: Context) -> Trial:
    done = {"completion_time": timestamp(ctx.now)}
    if obs.state == "Failed":
        assert obs.failure is not None
        message = shorten(obs.failure.message, 512) or None
        return trial.model_copy(update={**done, "result": obs.failure.reason, "message": message})
    loss = succeeded_eval_loss(pods)
    if loss is None or not math.isfinite(loss):
        why = "the trainer wrote no final eval loss to its termination log"
        return trial.model_copy(update={**done, "result": "NoEvalLoss", "message": why})
    return trial.model_copy(update={**done, "result": "Succeeded", "eval_loss": loss})


def _start_trials(
    ctx: Context, search: SearchSpec, trials: list[Trial]
) -> tuple[list[Trial], list[Trial]]:
    """Start trials while there is room; their values come from TPE (or their Job, if any)."""
    from kubetune_api.search.sampler import suggest  # optuna: only once a search runs

    started: list[Trial] = []
    while len(_running(trials)) < search.parallel_trials and len(trials) < search.trials:
        index = len(trials)
        params = _recorded_params(ctx, index) or suggest(search, _history(search, trials), index)
        trial = Trial(
            index=index,
            job_name=names.trial_job_name(ctx.owner.name, index),
            params=to_status_params(params),
            start_time=timestamp(ctx.now),
        )
        trials, started = [*trials, trial], [*started, trial]
    return trials, started


def _recorded_params(ctx: Context, index: int) -> Params | None:
    """The values on trial `index`'s Job, when it exists already (its status patch was lost)."""
    job = next((j for j in ctx.observed.jobs if j.get("trial") == index), None)
    try:
        value = json.loads((job or {}).get("params") or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) and value else None


def _history(search: SearchSpec, trials: list[Trial]) -> list[PastTrial]:
    from kubetune_api.search.sampler import PastTrial

    out = []
    for t in trials:
        params = from_status_params(search, t.params)
        if t.result is None:
            out.append(PastTrial(params, "running"))
        elif t.result == "Succeeded" and t.eval_loss is not None:
            out.append(PastTrial(params, "complete", t.eval_loss))
        else:
            out.append(PastTrial(params, "fail"))
    return out


def to_status_params(params: Params) -> dict[str, str]:
    """Field values as `status.trials[].params`: wire names, exact strings (repr of floats)."""
    return {PARAMS[k][1]: repr(v) if isinstance(v, float) else str(v) for k, v in params.items()}


def from_status_params(search: SearchSpec, params: dict[str, str]) -> Params:
    """`status.trials[].params` back to typed field values, by the kind of each range."""
    out: Params = {}
    for wire, text in params.items():
        name = WIRE_TO_FIELD[wire]
        rng = getattr(search.space, name)
        out[name] = float(text) if isinstance(rng, FloatRange) else int(text)
    return out


def _children(ctx: Context, running: list[Trial], new: set[int]) -> list[Json]:
    """Children of running trials whose Job is not seen yet (all on a full reconcile)."""
    search = ctx.spec.search
    assert search is not None
    out: list[Json] = []
    for trial in running:
        _, job, _ = _observe(ctx, trial)
        if job is not None and not ctx.full and trial.index not in new:
            continue
        params = from_status_params(search, trial.params)
        children = build_trial_children(ctx.owner, ctx.spec, trial.index, params, ctx.settings)
        out += [c for c in children if job is None or c["kind"] != "Job"]
    return _unique(out)


def _unique(objects: list[Json]) -> list[Json]:
    """Shared children (RBAC, the headless Service) once, in first-seen order."""
    seen, out = set(), []
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        if key not in seen:
            seen.add(key)
            out.append(obj)
    return out


# -- pending deadline ---------------------------------------------------------------------------


def _left(ctx: Context, trial: Trial) -> float | None:
    """Seconds of spec.pendingTimeoutSeconds left to a trial that has not started running."""
    left = pending_left(ctx, trial.start_time)
    if left is None or _observe(ctx, trial)[0].state not in ("Pending", "Missing"):
        return None
    return left


def _pending_too_long(ctx: Context, trial: Trial) -> bool:
    left = _left(ctx, trial)
    return left is not None and left < 0


def _pending_left(ctx: Context, trials: list[Trial]) -> float | None:
    lefts = [left for t in _running(trials) if (left := _left(ctx, t)) is not None]
    return min(lefts) if lefts else None


# -- status -------------------------------------------------------------------------------------


def _best(trials: list[Trial]) -> Trial | None:
    done = [t for t in trials if t.result == "Succeeded" and t.eval_loss is not None]
    return min(done, key=lambda t: (t.eval_loss, t.index)) if done else None


def _values(trial: Trial) -> str:
    return ", ".join(f"{k}={v}" for k, v in trial.params.items())


def _started(trial: Trial) -> str:
    return f"Started trial {trial.index}: job {trial.job_name} ({_values(trial)})"


def _progress(ctx: Context, trials: list[Trial]) -> Progress:
    search = ctx.spec.search
    assert search is not None
    ended = [t for t in trials if t.result is not None]
    return Progress(
        step=len(ended),
        total_steps=search.trials,
        percent=round(100.0 * len(ended) / search.trials, 1),
        eta_seconds=_eta(ended, search),
    )


def _eta(ended: list[Trial], search: SearchSpec) -> float | None:
    """Mean trial duration x the rounds of parallel trials still to run."""
    durations = [
        (end - start).total_seconds()
        for t in ended
        if (start := parse_time(t.start_time)) and (end := parse_time(t.completion_time))
    ]
    if not durations:
        return None
    rounds = math.ceil((search.trials - len(ended)) / search.parallel_trials)
    return round(sum(durations) / len(durations) * rounds)


def _with_trials(ctx: Context, status: FineTuneJobStatus, trials: list[Trial]) -> Json:
    best = _best(trials)
    metrics = (status.metrics or Metrics()).model_copy(
        update={"eval_loss": best.eval_loss if best else None}
    )
    return {
        "trials": trials,
        "best_trial": best.index if best else None,
        "progress": _progress(ctx, trials),
        "metrics": metrics,
        "start_time": status.start_time or timestamp(ctx.now),
    }


def _summary(trials: list[Trial], total: int) -> str:
    ended = len([t for t in trials if t.result is not None])
    text = f"{ended}/{total} trials done, {len(_running(trials))} running"
    best = _best(trials)
    return text + (f"; best: trial {best.index}, eval loss {best.eval_loss:.4f}" if best else "")


def _searching(ctx: Context, status: FineTuneJobStatus, trials: list[Trial]) -> FineTuneJobStatus:
    search = ctx.spec.search
    assert search is not None
    observations = [_observe(ctx, t)[0] for t in _running(trials)]
    running = any(o.state == "Running" for o in observations)
    waiting = next((o for o in observations if o.state in ("Pending", "Queued") and o.reason), None)
    conditions = list(status.conditions or [])
    if status.phase == "Suspended":
        conditions = set_condition(conditions, "Suspended", False, "Resumed", "", ctx.now)
    conditions = set_condition(
        conditions,
        "Running",
        running,
        "TrialsRunning" if running else (waiting.reason if waiting else "Waiting"),
        "" if running or waiting is None else waiting.message,
        ctx.now,
    )
    return status.model_copy(
        update={
            **_with_trials(ctx, status, trials),
            "phase": "Running" if running else "Pending",
            "conditions": conditions,
            "message": shorten(f"Searching: {_summary(trials, search.trials)}"),
        }
    )


def _finished(
    ctx: Context, status: FineTuneJobStatus, trials: list[Trial], events: list[Event]
) -> Plan:
    best = _best(trials)
    if best is None:
        message = f"Failed: none of the {len(trials)} trials succeeded"
        conditions = set_condition(
            list(status.conditions or []), "Failed", True, "NoTrialSucceeded", message, ctx.now
        )
        phase, event = "Failed", Event("Warning", "Failed", message)
        output = status.output
    else:
        adapter = adapter_location(ctx.spec, ctx.owner.name, trial_subdir(best.index))
        message = (
            f"Succeeded: best trial {best.index} (eval loss {best.eval_loss:.4f}, "
            f"{_values(best)}); adapter at {adapter}"
        )
        conditions = set_condition(
            list(status.conditions or []), "Complete", True, "Succeeded", "", ctx.now
        )
        phase, event = "Succeeded", Event("Normal", "Succeeded", message)
        output = OutputStatus(adapter_path=adapter)
    conditions = set_condition(conditions, "Running", False, "Completed", "", ctx.now)
    new = status.model_copy(
        update={
            **_with_trials(ctx, status, trials),
            "phase": phase,
            "conditions": conditions,
            "output": output,
            "completion_time": timestamp(ctx.now),
            "message": shorten(message),
        }
    )
    return Plan(new, events=[*events, event], status_keys=STATUS_KEYS)


def _suspended(
    ctx: Context, status: FineTuneJobStatus, trials: list[Trial], events: list[Event]
) -> Plan:
    conditions = suspended_conditions(status, ctx.now)
    message = "Suspended: running trials are stopped; their checkpoints are kept"
    new = status.model_copy(
        update={
            **_with_trials(ctx, status, trials),
            "phase": "Suspended",
            "conditions": conditions,
            "message": message,
        }
    )
    if status.phase != "Suspended":
        events.append(Event("Normal", "Suspended", message))
    delete = [t.job_name for t in _running(trials)]
    return Plan(new, delete_jobs=delete, events=events, status_keys=STATUS_KEYS)


def _timed_out(
    ctx: Context, status: FineTuneJobStatus, trials: list[Trial], stuck: Trial, events: list[Event]
) -> Plan:
    obs, _, _ = _observe(ctx, stuck)
    reason = obs.reason if obs.reason in PENDING_REASONS else "PendingTimeout"
    why = f"{obs.reason}: {obs.message}" if obs.message else obs.reason
    message = (
        f"trial {stuck.index} still pending after spec.pendingTimeoutSeconds="
        f"{ctx.spec.pending_timeout_seconds} ({why})"
    )
    ended = [
        t.model_copy(
            update={"result": reason, "message": message, "completion_time": timestamp(ctx.now)}
        )
        if t.result is None
        else t
        for t in trials
    ]
    conditions = set_condition(
        list(status.conditions or []), "Failed", True, reason, message, ctx.now
    )
    new = status.model_copy(
        update={
            **_with_trials(ctx, status, ended),
            "phase": "Failed",
            "conditions": conditions,
            "completion_time": timestamp(ctx.now),
            "message": shorten(f"Failed: {reason}: {message}"),
        }
    )
    delete = [t.job_name for t in _running(trials)]
    events.append(Event("Warning", reason, shorten(message, 1000)))
    return Plan(new, delete_jobs=delete, events=events, status_keys=STATUS_KEYS)
