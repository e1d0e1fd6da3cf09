"""The trainer's identity: a ServiceAccount whose Role lets it patch only its own status.

The trainer's status reporter patches `finetunejobs/status` of its own FineTuneJob and nothing
else (`resourceNames: [<name>]`, verbs get and patch). Pure; called by `children`.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator import names
from kubetune_operator.owner import Owner

COMPONENT = "trainer-rbac"


def build_service_account(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": owner.child_meta(names.trainer_account_name(owner.name), COMPONENT),
    }


def build_role(owner: Owner) -> dict[str, Any]:
    """get/patch on `finetunejobs/status` of this FineTuneJob only."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": owner.child_meta(names.trainer_account_name(owner.name), COMPONENT),
        "rules": [
            {
                "apiGroups": [names.GROUP],
                "resources": [f"{names.PLURAL}/status"],
                "resourceNames": [owner.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def build_role_binding(owner: Owner) -> dict[str, Any]:
    account = names.trainer_account_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": owner.child_meta(account, COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner.namespace}],
    }
