"""The base class every API object derives from: camelCase on the wire, unknown fields rejected.

Python code uses snake_case attributes; YAML, JSON and the CRD use the camelCase aliases. Every
field carries a description, which the CRD generator copies so `kubectl explain` shows it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


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
