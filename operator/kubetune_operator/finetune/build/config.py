"""The resolved trainer config of one attempt, and the ConfigMap that carries it into the pod.

`build_trainer_config` takes the trainer's share of the spec (`TrainerConfig.from_spec`),
points every data source and the model weights at their mounted paths, sets the output folder
on the mounted output volume, and applies the attempt's retry overrides (smaller micro-batch,
lower learning rate). `build_trial_config` does the same for a search trial (spec.search): its
sampled values applied (`kubetune tune`'s `with_params`, torch-free) and its own output folder
`trials/trial-NNNN`. `build_config_map` renders either as YAML under `config.yaml`. Pure; called
by `children` once per attempt or trial (and `trial_subdir` by `search`).
"""

from __future__ import annotations

from typing import Any

import yaml

from kubetune_api.finetune import FineTuneJobSpec, ModelSpec, OutputSpec
from kubetune_api.trainer_config import TrainerConfig
from kubetune_operator import names
from kubetune_operator.finetune.build.mounts import CONFIG_KEY, output_dir, source_path
from kubetune_operator.finetune.retry import apply_overrides
from kubetune_operator.owner import Owner

Params = dict[str, Any]  # search.space field (learning_rate, rank, ...) -> value


def _resolved_model(spec: FineTuneJobSpec) -> ModelSpec:
    source = spec.model.source
    if source is None or source.uri is not None:
        return spec.model
    local = source_path(source).path
    assert local is not None
    return spec.model.model_copy(update={"name": local, "source": None})


def build_trainer_config(
    spec: FineTuneJobSpec, name: str, overrides: dict[str, str] | None = None
) -> TrainerConfig:
    """What the trainer of this attempt reads: mounted paths, retry overrides applied."""
    dataset = spec.dataset
    mixture = [
        m.model_copy(
            update={
                "train": source_path(m.train),
                "eval": source_path(m.eval) if m.eval else None,
            }
        )
        for m in dataset.mixture or []
    ]
    dataset = dataset.model_copy(
        update={
            "train": source_path(dataset.train) if dataset.train else None,
            "eval": source_path(dataset.eval) if dataset.eval else None,
            "mixture": mixture or None,
        }
    )
    base = TrainerConfig.from_spec(spec)
    return base.model_copy(
        update={
            "model": _resolved_model(spec),
            "dataset": dataset,
            "training": apply_overrides(spec.training, overrides or {}),
            "output": OutputSpec(path=output_dir(spec, name), uri=spec.output.uri),
        }
    )


def trial_subdir(trial: int) -> str:
    """A search trial's folder under the job's output folder (the layout of `kubetune tune`)."""
    return f"trials/trial-{trial:04d}"


def build_trial_config(
    spec: FineTuneJobSpec, name: str, trial: int, params: Params
) -> TrainerConfig:
    """What search trial `trial` trains: the attempt config with its values and its own folder."""
    from kubetune_api.search.space import param_values  # optuna: only once a search runs

    output = {"path": f"{output_dir(spec, name)}/{trial_subdir(trial)}"}
    values = {**param_values(params), "output": output}
    return build_trainer_config(spec, name).with_values(values, drop=["search"])


def render_config(config: TrainerConfig) -> str:
    """The config as the YAML file the trainer loads (camelCase, no nulls, stable order)."""
    return yaml.safe_dump(config.to_wire(), sort_keys=False, allow_unicode=True, width=100)


def build_config_map(
    owner: Owner,
    spec: FineTuneJobSpec,
    run: names.Run,
    overrides: dict[str, str] | None = None,
    params: Params | None = None,
) -> dict[str, Any]:
    """ConfigMap `<name>-a<N>` (a trial's: `<name>-t<N>`, with `params`) holding `config.yaml`."""
    config = (
        build_trial_config(spec, owner.name, run.index, params or {})
        if run.trial
        else build_trainer_config(spec, owner.name, overrides)
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.child_meta(
            run.job_name(owner.name), "trainer-config", **run.label_kwargs()
        ),
        "data": {CONFIG_KEY: render_config(config)},
    }
