"""`kubetune tune`: Bayesian hyperparameter search over a config's `search` block.

    kubetune tune --config cfg.yaml --trials 16 [--parallel 2] [--study-dir out/tune]

Optuna's TPE sampler (seeded) proposes values for the fields of `search.space`; every trial is
a real training run (`kubetune_trainer.train.run`) whose final eval loss is the objective, and
whose intermediate eval losses feed median pruning. Resumable from the study's SQLite file.
Modules: `trials` (one run, the pruning reporter, the child-process entry), `study`
(create/resume, run, report), `cli` (the command). The search space and the sampler are shared
with the operator's `spec.search`, so they live in the torch-free `kubetune_api.search`.
"""
