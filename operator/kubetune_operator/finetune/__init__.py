"""The FineTuneJob operator: a trainer Job per attempt (or per search trial), retried by the operator.

- `handlers`: the kopf registrations (made at import), which wake the runner.
- `reconcile`: the runner wiring: read (cache first) -> `plan` -> apply in two waves -> patch status.
- `plan`: pure: spec + status + observed children + now -> objects, deletions, status, Events;
  its steps `attempts` (how an attempt ends), `search` (spec.search's trials) and `preflight`
  (the memory estimate), over `plan_types` (the Plan, its inputs, the child indexes).
- `observe`: what a Job and its pods say about an attempt; `failure`: the trainer's exit codes
  and termination line; `retry`: how a failure changes the next attempt.
- `validation`: the spec checks only the operator can make; `topology`: trainer processes.
- `build/`: pure builders of the children (children, job, config, rbac, mounts).
"""
