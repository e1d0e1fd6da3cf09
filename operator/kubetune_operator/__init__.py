"""The FineTuneJob operator: kopf handlers over pure builders, one Kubernetes I/O module.

Layers, from the outside in (each imports only the ones after it):
  cli        `kubetune operator`: flags -> settings -> kopf.run
  handlers   kopf registrations; each handler is parse -> reconcile -> done
  reconcile  the service: reads (cache, kube), plans (plan), applies, patches status, events
  kube       the only module that talks to the API server (server-side apply, status patches)
  cache      the freshest FineTuneJob bodies (watch + own writes), so reconciles need no GET
  plan       pure: spec + status + observed children -> desired objects, status, events
             (endings: how an attempt ends; search: a spec.search job's trials; preflight:
             the memory estimate; plan_types: the Plan and its inputs)
  children, job, config, rbac, mounts: pure builders of the child objects
  retry, observe, status, validation, names, owner, settings: pure helpers
  metrics    Prometheus metrics
The schema lives in `kubetune_api`; the trainer never imports this package.
"""
