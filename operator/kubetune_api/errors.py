"""Configuration errors reported all at once, one line per problem.

Callers: the trainer CLI (exit code 2, one line per problem), the operator (a FineTuneJob with
an invalid spec goes to Failed/InvalidSpec with these lines as its message).
"""

from __future__ import annotations

from pydantic import ValidationError


class ConfigError(ValueError):
    """One or more problems in a config; each names the field path and the bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    @classmethod
    def from_validation(cls, err: ValidationError, prefix: str = "") -> ConfigError:
        """Turn pydantic's errors into 'a.b.c: reason, got VALUE' lines."""
        return cls([_format(e, prefix) for e in err.errors()])


def _format(error: object, prefix: str) -> str:
    assert isinstance(error, dict)
    loc = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    path = ".".join(p for p in (prefix, loc) if p)
    msg = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        return f"{path}: unknown field"
    if error.get("type") == "missing":
        return f"{path}: required field is missing"
    msg = msg.removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, dict | list):
        return f"{path}: {msg}" if path else msg
    return f"{path}: {msg}, got {value!r}" if path else f"{msg}, got {value!r}"
