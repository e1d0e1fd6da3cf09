"""Kubernetes string formats the schema enforces, as regular expressions both sides accept.

DNS-1123 names (PVCs, Secrets, ConfigMaps), ConfigMap keys, label keys and values, resource
names and quantities, container image references, and paths inside a volume (no `..`). Each
pattern is RE2 (no lookaround), so the same text is a pydantic `pattern`, an OpenAPI `pattern`
in the CRD and a CEL `matches()` argument: the API server refuses a bad value at `kubectl apply`
and pydantic refuses it in `kubetune train` and in the operator (a CRD from an older release).
`cel_*` build the CEL rules for what a pattern cannot say (map keys, `..` segments). Used by
`finetune` (the fields) and `finetune_crd` (the CEL rules); imports nothing.
"""

from __future__ import annotations

from typing import Any

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"^{_LABEL}(\.{_LABEL})*$"  # PVC, Secret and ConfigMap names: <= 253
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"  # ConfigMap and Secret keys
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
QUALIFIED_NAME = rf"^({_LABEL}(\.{_LABEL})*/)?{_NAME}$"  # label keys, resource names
LABEL_VALUE = rf"^({_NAME})?$"
QUANTITY = (  # as resource.Quantity parses it, without a sign (requests are never negative)
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
IMAGE = (  # [registry[:port]/]repository[/...][:tag][@digest], as the container runtimes parse it
    rf"^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*"
    rf"(:[0-9]+)?/)?{_COMPONENT}(/{_COMPONENT})*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{{0,127}})?"
    rf"(@sha256:[a-f0-9]{{64}})?$"
)
PARENT_SEGMENT = r"(^|/)\.\.(/|$)"  # a path that climbs out of its volume

NAME_MAX = 253
LABEL_VALUE_MAX = 63
KEY_MAX = 317  # 253 (prefix) + 1 + 63
PATH_MAX = 4096
IMAGE_MAX = 1024
MAP_MAX = 64  # entries of a nodeSelector or requests/limits map (bounds the CEL cost)


def _cel(pattern: str) -> str:
    """A pattern as a CEL string literal (single quotes; backslashes doubled)."""
    return "'" + pattern.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_keys(pattern: str, message: str) -> dict[str, Any]:
    """A CEL rule on a map: every key matches `pattern` (OpenAPI has no propertyNames)."""
    return {"rule": f"self.all(k, k.matches({_cel(pattern)}))", "message": message}


def cel_no_parent(message: str) -> dict[str, Any]:
    """A CEL rule on a path string: no `..` segment."""
    return {"rule": f"!self.matches({_cel(PARENT_SEGMENT)})", "message": message}
