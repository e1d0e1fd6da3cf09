"""The hyperparameter search shared by `kubetune tune` and a FineTuneJob's `spec.search`.

`space` (Optuna distributions of `search.space`, a trial's config, the checks run before any
trial) and `sampler` (the seeded TPE sampler, the median pruner, and stateless suggestions from
a trial history, which the operator uses). These two modules import optuna, which the operator
and trainer images both install; nothing else in `kubetune_api` does, and importing
`kubetune_api` does not import this package. Nothing is imported here.
"""
