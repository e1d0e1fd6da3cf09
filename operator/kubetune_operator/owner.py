"""The FineTuneJob a child belongs to: metadata and owner references for the builders.

Every child gets the same labels, the owner's full name as an annotation, and a controller
owner reference, so `kubectl delete ftj X` garbage-collects it. Pure; used by every
`finetune.build` builder and by `finetune.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_operator import names


@dataclass(frozen=True)
class Owner:
    """Identity of one FineTuneJob (its uid makes owner references exact)."""

    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def child_meta(
        self, name: str, component: str, attempt: int | None = None, trial: int | None = None
    ) -> dict[str, Any]:
        """metadata of a child object: name, namespace, labels, annotations, ownerReferences."""
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": names.labels(self.name, component, attempt, trial),
            "annotations": {names.ANNOTATION_FTJ: self.name},
            "ownerReferences": [self.reference()],
        }
