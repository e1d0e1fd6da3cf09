"""charts/kubetune/values.yaml: every value is documented, and every value is used.

No helm needed (the rendering tests are tests/integration/test_chart*.py). Documented means a
comment right above the key, as in cert-manager's chart; keys inside a Kubernetes object that
is passed through whole (resources, probes, security contexts, tolerations) are covered by the
comment above that object. Used means a template reads the value or one of its parents.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubetune"
# Values handed to Kubernetes as whole objects: their inner keys are Kubernetes' own fields.
PASS_THROUGH = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "livenessProbe",
    "readinessProbe",
    "nodeSelector",
    "defaults.gpuTolerations",
}
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):")


def documented_keys() -> list[tuple[str, bool]]:
    """(dotted path, has a comment directly above) for every key line of values.yaml."""
    out: list[tuple[str, bool]] = []
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = KEY.match(line)
        if match:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([*(k for _, k in stack), match["key"]])
            stack.append((indent, match["key"]))
            out.append((path, previous.lstrip().startswith("#")))
        if line.strip():
            previous = line
    return out


def leaf_paths(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node and prefix not in PASS_THROUGH:
        return [p for k, v in node.items() for p in leaf_paths(v, f"{prefix}.{k}".lstrip("."))]
    return [prefix]


def test_every_value_has_a_comment() -> None:
    missing = [
        path
        for path, has_comment in documented_keys()
        if not has_comment
        and not any(path.startswith(f"{p}.") for p in PASS_THROUGH)
        and not path.startswith(("livenessProbe.", "readinessProbe."))
    ]
    assert not missing, f"values without a comment above them: {missing}"


def test_every_value_is_used_by_a_template() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    templates = "\n".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())
    unused = []
    for path in leaf_paths(values):
        parts = path.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if not any(
            f".Values.{p}" in templates and _whole_use(templates, p, path) for p in prefixes
        ):
            unused.append(path)
    assert not unused, f"values no template reads: {unused}"


def _whole_use(templates: str, prefix: str, path: str) -> bool:
    """`.Values.<prefix>` reads <path>: the exact value, or the whole parent object."""
    if prefix == path:
        return True
    return re.search(rf"\.Values\.{re.escape(prefix)}(?![\w.])", templates) is not None
