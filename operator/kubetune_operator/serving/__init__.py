"""The ModelDeployment operator: INT8 inference servers per model, a router, and their status.

- `names`: object names, labels and annotations of a ModelDeployment's children (pure).
- `adapters`: which adapter each model serves (a FineTuneJob's output, a path, pvc or uri) and
  the volumes that make it visible in the pod (pure).
- `builders`: the server/router Deployments and Services (pure `build_*`).
- `status`: phase, ready count, endpoint and conditions from the Deployments (pure).
- `reconcile`: read -> build -> server-side apply -> derive status -> patch if changed (I/O
  through `kubetune_operator.kube` only).
- `handlers`: the kopf registrations, attached by `kubetune_operator.handlers.register`.
"""
