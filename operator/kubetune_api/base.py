"""The base class every API object derives from: camelCase on the wire, unknown fields rejected.

Python code uses snake_case attributes; YAML, JSON and the CRD use the camelCase aliases. Every
field carries a description, which the CRD generator copies so `kubectl explain` shows it.
`with_values` is the one way to change a validated object: the operator's retry overrides
(`training.microBatchSize`, ...) and a search trial's values go through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from kubetune_api.errors import ConfigError


class ApiModel(BaseModel):
    """Base for all spec/status objects."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in YAML and the Kubernetes API (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def with_values(self, values: Mapping[str, Any], *, drop: Iterable[str] = ()) -> Self:
        """A copy with fields set (and `drop` removed) by dotted wire path, validated again.

        `cfg.with_values({"training.learningRate": 1e-5})`; a value may be a mapping, which
        replaces the whole section at its path. A value the schema refuses raises ConfigError
        naming the path and the value, as loading a config file would.
        """
        raw = self.to_wire()
        for path in drop:
            *parents, leaf = path.split(".")
            _section(raw, parents, create=False).pop(leaf, None)
        for path, value in values.items():
            *parents, leaf = path.split(".")
            _section(raw, parents, create=True)[leaf] = value
        try:
            return self.model_validate(raw)
        except ValidationError as err:
            raise ConfigError.from_validation(err) from None


def _section(raw: dict[str, Any], parents: list[str], *, create: bool) -> dict[str, Any]:
    """The mapping at `parents` inside `raw` (created on the way when `create`, else {})."""
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            if not create:
                return {}
            child = node[key] = {}
        node = child
    return node
