"""The Kubetune operator (kopf): FineTuneJobs and ModelDeployments over one shared core.

Packages, one per custom resource, built alike:
  finetune/  FineTuneJob: handlers (kopf registrations), reconcile (runner wiring), plan (pure
             decision; attempts: how an attempt ends; search: spec.search's trials; preflight:
             the memory estimate; plan_types: the Plan and its inputs), observe, failure, retry,
             validation, topology, and build/ (pure builders: children, job, config, rbac, mounts)
  serving/   ModelDeployment: handlers, reconcile, plan, status, builders, adapters, names
The shared core, here at the top (each kind imports it; it imports neither kind):
  cli        `kubetune operator`: flags -> settings -> the parts -> kopf.run
  activities kopf's operator-wide handlers (settings at startup, login)
  runner     the one reconcile runner: per-object lock, coalescing, debounce, requeue, threads,
             API errors -> kopf's TemporaryError/PermanentError
  kube       the only module that talks to the API server (server-side apply, status patches)
  cache      the freshest bodies seen (watch + own writes), so reconciles need no GET
  state      the typed slot through which `cli` hands each handlers module its parts
  status, names, owner, settings, metrics: conditions and Events, child names, owner
             references, operator settings, Prometheus metrics
Imports point down this list and into the core, never up; tests/unit/operator/test_layers.py
keeps the stack at most 8 floors high. The schema lives in `kubetune_api`; the trainer never
imports this package.
"""
