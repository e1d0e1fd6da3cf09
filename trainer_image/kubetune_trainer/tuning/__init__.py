"""`kubetune tune`: Bayesian hyperparameter search over a config's `search` block.

    kubetune tune --config cfg.yaml --trials 16 [--parallel 2] [--study-dir out/tune]

Optuna's TPE sampler (seeded) proposes values for the fields of `search.space`; every trial is
a real training run (`kubetune_trainer.train.run`) whose final eval loss is the objective, and
whose intermediate eval losses feed median pruning. Resumable from the study's SQLite file.
Modules: `space` (distributions, trial configs, checks), `sampler` (the seeded TPE sampler, and
stateless suggestions from a trial history, which the operator's `spec.search` uses), `trials`
(one run, the pruning reporter, the child-process entry), `study` (create/resume, run, report),
`cli` (the command). Nothing is imported here, so the operator can import `space` and
`sampler` (optuna and the schema only) without the training code.
"""
