"""Pure builders of a FineTuneJob's children: same inputs, equal objects; no API calls.

- `children`: every child of one attempt or trial, in apply order (called by the plan steps).
- `job`: the trainer Job and the headless Service; `config`: the trainer config and ConfigMap;
- `rbac`: the trainer's ServiceAccount, Role and RoleBinding; `mounts`: volumes and paths.
"""
