"""The ModelDeployment operator: INT8 inference servers per model, a router, and their status.

- `names`: object names, labels and annotations of a ModelDeployment's children (pure).
- `adapters`: which adapter each model serves (a FineTuneJob's output, a path, pvc or uri) and
  the volumes that make it visible in the pod (pure).
- `builders`: the server/router Deployments and Services (pure `build_*`).
- `status`: phase, ready count, endpoint and conditions from the Deployments (pure).
- `plan`: the plan of one reconcile (objects to apply, children to prune, the status), pure.
- `reconcile`: the runner wiring: read -> plan -> server-side apply -> prune -> patch the status
  if changed (I/O through `kubetune_operator.kube` only; run by `kubetune_operator.runner`).
- `handlers`: the kopf registrations, made at import; `kubetune_operator.cli` imports them.
"""
