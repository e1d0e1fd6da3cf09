"""pydantic models -> Kubernetes structural OpenAPI v3 schemas, and one CRD from a schema.

pydantic's JSON Schema is turned into a Kubernetes structural OpenAPI v3 schema: references
inlined, `Optional[X]` unwrapped to X (not required), draft-2020 exclusive bounds rewritten the
OpenAPI 3.0 way, titles dropped, descriptions kept (`kubectl explain`), objects with defaults
given `default: {}` so the API server fills their nested defaults. Cross-field rules become CEL
`x-kubernetes-validations` (declared beside the models in `CEL_RULES`). `build_crd` wraps one
kind's schema into a CustomResourceDefinition. Called by `finetune_crd` and `deployment_crd`,
which `crd` (the generator, `make crds`) collects.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from kubetune_api.names import GROUP, VERSION

# path (dotted, from the kind's root) -> CEL rules the API server evaluates.
Json = dict[str, Any]


def _resolve(node: Json, defs: Json) -> Json:
    """Inline `$ref`s and clean one schema node and everything below it."""
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    out: Json = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _resolve(value, defs)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [_resolve(sub, defs) for sub in value]
        elif key != "$defs":
            out[key] = value
    return _clean(out)


def _clean(node: Json) -> Json:
    """Rewrite one resolved node into the structural-schema dialect."""
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        node.pop(
            "additionalProperties"
        )  # structural schemas prune unknown fields; kubectl rejects them
    non_null = [s for s in node.get("anyOf", []) if s.get("type") != "null"]
    if sorted(s.get("type", "") for s in non_null) == ["integer", "string"]:
        text = next(s for s in non_null if s.get("type") == "string")  # its pattern stays
        kept = {k: v for k, v in text.items() if k in ("pattern", "maxLength")}
        non_null = [{"x-kubernetes-int-or-string": True, **kept}]
    if sorted(s.get("type", "") for s in non_null) == ["boolean", "string"]:
        # `bool | Literal["auto"]`: a structural schema has one type per field, so the API server
        # keeps the value as given and the operator's pydantic parse checks it (names the field).
        node.pop("anyOf")
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "anyOf" in node and len(non_null) == 1:
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        node = {**non_null[0], **rest}
        if "default" in node and node["default"] is None:
            node.pop("default")
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "integer" if all(isinstance(v, int) for v in node["enum"]) else "string"
    if "type" not in node and "enum" not in node and "x-kubernetes-int-or-string" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True  # Any: an arbitrary JSON value
    return node


def _object_defaults(schema: Json, model: type[BaseModel]) -> None:
    """Fields whose default is an object (default_factory) get `default: {}` in the CRD."""
    for name, info in model.model_fields.items():
        alias = info.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        sub = _model_of(info.annotation)
        if sub is not None:
            if info.default_factory is not None:
                prop["default"] = {}
            _object_defaults(prop, sub)
        elif prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            inner = _list_model(info.annotation)
            if inner is not None:
                _object_defaults(prop["items"], inner)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for cand in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _list_model(annotation: Any) -> type[BaseModel] | None:
    for cand in getattr(annotation, "__args__", ()):
        found = _model_of(cand) or _list_model(cand)
        if found is not None:
            return found
    return None


def _add_rules(schema: Json, rules: dict[str, list[Json]]) -> None:
    for path, items in rules.items():
        node = schema
        for part in path.split(".") if path else []:
            node = node["properties"][part] if part != "[]" else node["items"]
        # copies: a rule dict shared by two paths would otherwise be dumped as a YAML anchor
        node.setdefault("x-kubernetes-validations", []).extend(copy.deepcopy(items))


def openapi_schema(model: type[BaseModel], rules: dict[str, list[Json]] | None = None) -> Json:
    """Structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _resolve(raw, raw.get("$defs", {}))
    _object_defaults(schema, model)
    _add_rules(schema, rules or {})
    return schema


def _description(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


def build_crd(
    *,
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[Json],
    rules: dict[str, list[Json]],
    doc: str,
) -> Json:
    """A complete apiextensions.k8s.io/v1 CustomResourceDefinition."""
    root = {
        "type": "object",
        "description": doc,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this object (kubetune.io/v1alpha1).",
            },
            "kind": {"type": "string", "description": f"Kind of this object ({kind})."},
            "metadata": {"type": "object"},
            "spec": {**openapi_schema(spec, rules), "description": _description(spec)},
            "status": {**openapi_schema(status), "description": _description(status)},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["kubetune"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }
