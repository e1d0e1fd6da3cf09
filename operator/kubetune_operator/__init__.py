"""The FineTuneJob operator: kopf handlers over pure builders, one Kubernetes I/O module.

Layers, from the outside in (each imports only the ones after it):
  cli        `kubetune operator`: flags -> settings -> kopf.run
  handlers   kopf registrations; each handler is parse -> reconcile -> done
  reconcile  the service: reads (kube), plans (plan), applies, patches status, posts events
  kube       the only module that talks to the API server (server-side apply, status patches)
  plan       pure: spec + status + observed children -> desired objects, status, events
  job, config, rbac, mounts, retry, observe, status, validation, names: pure helpers
The schema lives in `kubetune_api`; the trainer never imports this package.
"""
