"""The trainer Job of one attempt (and the headless Service of multi-node jobs). Pure builders.

One pod per node runs `torchrun ... --no-python kubetune train --config /etc/kubetune/config.yaml
--resume auto`, one process per GPU. `nodes > 1` gives an Indexed Job (completions = parallelism
= nodes) whose pods find each other through a headless Service, as JobSet does: pod 0 is the
rendezvous master (`<job>-0.<service>`) and each pod's rank is its completion index, read from
the `batch.kubernetes.io/job-completion-index` annotation through the downward API. The Job has
`backoffLimit: 0`: retries are the operator's (see `retry`). Its `podFailurePolicy` fails the Job
at once, naming the rule, when a pod was disrupted (`DisruptionTarget`: preemption, eviction, a
drain) or the trainer exited Preempted (code 6: SIGTERM, checkpoint written), so `observe` can
tell a disruption from a failure even when the pod is gone; the pod gets
`terminationGracePeriodSeconds` to write that checkpoint. `KUBETUNE_RUN_ID` is the
FineTuneJob's uid: the trainer resumes only checkpoints of the same run, so a FineTuneJob
re-created under the same name never inherits the old one's output. A search trial's Job (`Run` with
`trial=True`) is the same pod without the status-reporting environment or a ServiceAccount token.
With `spec.scheduling.queueName` the Job carries Kueue's `kueue.x-k8s.io/queue-name` label and
is created suspended, so Kueue admits it as one workload (every pod of a multi-node job, or
none); `priorityClassName` goes on the pods (Kueue reads the workload's priority from it), and
the spec's extra labels and annotations on the Job and its pods. Called by `children`.
"""

from __future__ import annotations

import copy
from typing import Any

from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.scheduling import QUEUE_LABEL
from kubetune_api.termination import ExitCode
from kubetune_operator import names
from kubetune_operator.finetune.build.mounts import (
    CONFIG_DIR,
    CONFIG_PATH,
    Mounts,
    resolve_mounts,
    uses_object_storage,
)
from kubetune_operator.names import GPU_RESOURCE, TRAINER_CONTAINER
from kubetune_operator.owner import Owner
from kubetune_operator.settings import Settings
from kubetune_operator.storage import hf_home, storage_env

Json = dict[str, Any]
RUN_ID_ENV = "KUBETUNE_RUN_ID"  # kubetune_trainer.identity reads it
# The rules' order is the contract `observe.job_failure` reads back ("... rule at index N").
POD_FAILURE_POLICY: Json = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": TRAINER_CONTAINER,
                "operator": "In",
                "values": [int(ExitCode.PREEMPTED)],
            },
        },
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
}


SHUTDOWN_MARGIN = 10  # seconds of the grace period left to torchrun itself after its workers


def grace_seconds(spec: FineTuneJobSpec, settings: Settings) -> int:
    """The pod's terminationGracePeriodSeconds: the spec's, else the operator's default."""
    return spec.resources.termination_grace_period_seconds or settings.termination_grace_seconds


def trainer_args(spec: FineTuneJobSpec, settings: Settings) -> list[str]:
    """torchrun's arguments: one process per GPU; static rendezvous on pod 0 for nodes > 1.

    torchrun forwards SIGTERM to its workers and waits `--shutdown_timeout` (30 s by default)
    before killing them: here nearly the whole grace period, so the checkpoint gets written.
    """
    res = spec.resources
    shutdown = max(1, grace_seconds(spec, settings) - SHUTDOWN_MARGIN)
    launch = [f"--nproc_per_node={max(1, res.gpus_per_node)}", f"--shutdown_timeout={shutdown}"]
    if res.nodes > 1:
        launch = [
            f"--nnodes={res.nodes}",
            *launch,
            "--node_rank=$(NODE_RANK)",
            "--master_addr=$(MASTER_ADDR)",
            f"--master_port={settings.master_port}",
        ]
    else:
        launch = ["--standalone", *launch]
    train = ["kubetune", "train", "--config", CONFIG_PATH, "--resume", "auto", "--no-progress"]
    return [*launch, "--no-python", *train]


def _env(owner: Owner, spec: FineTuneJobSpec, run: names.Run, settings: Settings) -> list[Json]:
    # An attempt reports progress into the FineTuneJob's status; a search trial does not (the
    # operator owns a search's progress and reads each trial's result from its pod).
    env: list[Json] = (
        [{"name": "KUBETUNE_TRIAL", "value": str(run.index)}]
        if run.trial
        else [
            {"name": "KUBETUNE_FINETUNEJOB", "value": f"{owner.namespace}/{owner.name}"},
            {"name": "KUBETUNE_ATTEMPT", "value": str(run.index)},
        ]
    )
    env.append({"name": RUN_ID_ENV, "value": owner.uid})
    env += [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HF_HOME", "value": hf_home(spec.storage)},
    ]
    if spec.resources.nodes > 1:
        job = run.job_name(owner.name)
        index = f"metadata.annotations['{names.COMPLETION_INDEX}']"
        env += [
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}},
            {"name": "MASTER_ADDR", "value": f"{job}-0.{names.service_name(owner.name)}"},
            {"name": "MASTER_PORT", "value": str(settings.master_port)},
            {"name": "NNODES", "value": str(spec.resources.nodes)},
        ]
    token = spec.model.token_secret_ref
    if token is not None:
        ref = {"secretKeyRef": {"name": token.name, "key": token.key}}
        env.append({"name": "HF_TOKEN", "valueFrom": ref})
    if uses_object_storage(spec):
        env += storage_env(spec.storage)
    env += [{"name": k, "value": v} for k, v in settings.extra_env]
    return env


def _resources(spec: FineTuneJobSpec) -> Json:
    extra = spec.resources.resources
    requests = dict(extra.requests or {}) if extra else {}
    limits = dict(extra.limits or {}) if extra else {}
    gpus = spec.resources.gpus_per_node
    if gpus > 0:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = gpus
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _container(
    owner: Owner, spec: FineTuneJobSpec, run: names.Run, settings: Settings, mounts: Mounts
) -> Json:
    return {
        "name": TRAINER_CONTAINER,
        "image": spec.resources.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["torchrun"],
        "args": trainer_args(spec, settings),
        "env": _env(owner, spec, run, settings),
        "resources": _resources(spec),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts.mounts,
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _tolerations(spec: FineTuneJobSpec, settings: Settings) -> list[Json]:
    own = [t.to_wire() for t in spec.resources.tolerations or []]
    gpu = list(settings.gpu_tolerations) if spec.resources.gpus_per_node > 0 else []
    return own + [t for t in gpu if t not in own]


def _pod_spec(owner: Owner, spec: FineTuneJobSpec, run: names.Run, settings: Settings) -> Json:
    mounts = resolve_mounts(spec, owner.name)
    uid = settings.run_as_user
    pod: Json = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace_seconds(spec, settings),
        "serviceAccountName": names.trainer_account_name(owner.name),
        "automountServiceAccountToken": not run.trial,  # only attempts patch the status
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(owner, spec, run, settings, mounts)],
        "volumes": [
            {"name": "config", "configMap": {"name": run.job_name(owner.name)}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "tmp", "emptyDir": {}},
            *mounts.volumes,
        ],
    }
    if spec.resources.node_selector:
        pod["nodeSelector"] = dict(spec.resources.node_selector)
    tolerations = _tolerations(spec, settings)
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.resources.nodes > 1:
        pod["subdomain"] = names.service_name(owner.name)
    if spec.scheduling.priority_class_name:
        pod["priorityClassName"] = spec.scheduling.priority_class_name
    return pod


def _with_user_meta(meta: Json, spec: FineTuneJobSpec) -> Json:
    """`meta` plus spec.scheduling's labels and annotations (ours win; the schema refuses
    clashing keys anyway)."""
    extra = spec.scheduling
    meta["labels"] = {**(extra.labels or {}), **meta["labels"]}
    meta["annotations"] = {**(extra.annotations or {}), **meta["annotations"]}
    return meta


def build_job(
    owner: Owner,
    spec: FineTuneJobSpec,
    run: names.Run,
    settings: Settings,
    config_hash: str = "",
) -> Json:
    """batch/v1 Job `<name>-a<N>` (a search trial: `<name>-t<N>`): backoffLimit 0, Indexed
    when nodes > 1."""
    name = run.job_name(owner.name)
    nodes = spec.resources.nodes
    meta = owner.child_meta(name, "trainer", **run.label_kwargs())
    if config_hash:
        meta["annotations"][names.ANNOTATION_HASH] = config_hash
    template_meta = _with_user_meta(
        {"labels": run.labels(owner.name, "trainer"), "annotations": dict(meta["annotations"])},
        spec,
    )
    meta = _with_user_meta(meta, spec)
    queue = spec.scheduling.queue_name
    if queue:
        meta["labels"][QUEUE_LABEL] = queue
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            # Queued: created suspended, Kueue unsuspends it on admission (all pods at once).
            **({"suspend": True} if queue else {}),
            "backoffLimit": 0,
            "podFailurePolicy": copy.deepcopy(POD_FAILURE_POLICY),
            "completions": nodes,
            "parallelism": nodes,
            "completionMode": "Indexed" if nodes > 1 else "NonIndexed",
            "template": {
                "metadata": template_meta,
                "spec": _pod_spec(owner, spec, run, settings),
            },
        },
    }


def build_service(owner: Owner, settings: Settings) -> Json:
    """Headless Service giving multi-node pods DNS names (`<job>-<index>.<service>`)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.child_meta(names.service_name(owner.name), "trainer-dns"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_FTJ: names.label_value(owner.name)},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": settings.master_port,
                    "targetPort": settings.master_port,
                }
            ],
        },
    }
