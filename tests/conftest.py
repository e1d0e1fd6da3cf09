"""Shared pytest fixtures for every tier (unit, integration, e2e).

Model fixtures are session-scoped and lazy: a test that does not name one pays nothing, and the
ones that do share a single build per session.

- `tiny_model_dir`: random-weight Qwen3 "tiny" with the small bundled vocabulary (a few seconds).
- `qwen3_tokenizer`: the genuine Qwen3 tokenizer (converted once, then loaded from
  `${KUBETUNE_CACHE:-~/.cache/kubetune}/tokenizers/` in about two seconds).
- `qwen3_tiny_model_dir`: the "tiny" model with the genuine Qwen3 vocabulary (151,936 rows).

- `s3_server`: a real S3-compatible server (versitygw, `hack/s3.sh`) on the first free port of
  29000-29099 (`$KUBETUNE_S3_TEST_PORTS` as FIRST-LAST), one per session; `s3` (per test) gives
  a fresh bucket and the AWS_* variables set for the test.

`make test` runs the tiers on two pytest-xdist workers (`-n 2 --dist loadgroup`): every test
under tests/e2e (the cluster tiers, which share one control plane and start one operator per
module, so they run one at a time, in order) goes to one worker, the unit and integration tiers
to the other (`pytest_xdist_make_scheduler` below: two groups by path; xdist 3.8's own
`xdist_group` marks do nothing under pytest 9, which no longer reads the node id attribute xdist
rewrites). The cluster tiers mostly wait on pods and controllers, the other two mostly compute,
so together they take about as long as the cluster tiers alone. Plain `pytest` runs serially.

The genuine-vocabulary fixtures skip, saying why, when `qwen.tiktoken` (from the `dashscope`
wheel, or `$KUBETUNE_QWEN_TIKTOKEN`) is not available. Add further shared fixtures here; keep
tier-specific ones in `tests/<tier>/conftest.py`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


CLUSTER_TIERS = "tests/e2e/"  # node ids are relative to the repository root


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `--dist loadgroup`: two groups, `cluster` (tests/e2e, in collection order, on the
    first worker) and `local` (everything else); any other --dist mode is xdist's own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "cluster" if nodeid.startswith(CLUSTER_TIERS) else "local"

    return TierScheduling(config, log)


def _require_qwen_tiktoken() -> None:
    from kubetune_trainer.qwen3_tokenizer import find_qwen_tiktoken

    try:
        find_qwen_tiktoken()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen3 "tiny" checkpoint with the small vocabulary, built once."""
    from kubetune_trainer.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3-small"), vocab="small", size="tiny")


@pytest.fixture(scope="session")
def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """The genuine Qwen3 tokenizer (cached on disk across sessions)."""
    _require_qwen_tiktoken()
    from kubetune_trainer.qwen3_tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


@pytest.fixture(scope="session")
def qwen3_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen3 "tiny" checkpoint with the genuine Qwen3 vocabulary, built once."""
    _require_qwen_tiktoken()
    from kubetune_trainer.tiny_model import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-qwen3-genuine"), vocab="qwen3", size="tiny"
    )


REPO = Path(__file__).resolve().parents[1]
S3_SCRIPT = REPO / "hack" / "s3.sh"


def _free_port(first: int, last: int) -> int:
    for port in range(first, last + 1):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {first}-{last} for the S3 server")


@dataclass
class S3Server:
    """A running versitygw: its endpoint and the AWS_* variables a client needs."""

    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """versitygw on 127.0.0.1, built once per machine (`hack/s3.sh build`, cached and locked)."""
    first, _, last = os.environ.get("KUBETUNE_S3_TEST_PORTS", "29000-29099").partition("-")
    port = _free_port(int(first), int(last or first))
    state = tmp_path_factory.mktemp("s3-server")
    subprocess.run([str(S3_SCRIPT), "up", str(state), str(port)], check=True, timeout=1800)
    env_text = subprocess.run(
        [str(S3_SCRIPT), "env", str(port)], check=True, capture_output=True, text=True
    ).stdout
    env = {}
    for line in env_text.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip('"')
    try:
        yield S3Server(port, env)
    finally:
        subprocess.run([str(S3_SCRIPT), "down", str(state)], check=False, timeout=60)


@dataclass
class S3Bucket:
    """A fresh bucket on the session's server, with the AWS_* variables set for this test."""

    server: S3Server
    name: str
    client: Any

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents") or [])

    def put_tree(self, folder: Path, prefix: str) -> str:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}"
            self.client.upload_file(str(path), self.name, key)
        return self.uri(prefix.strip("/"))


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Bucket:
    """A new bucket; AWS_* point at the server and the download cache is this test's own."""
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KUBETUNE_STORAGE_CACHE", str(tmp_path / "s3-cache"))
    client = s3_server.client()
    name = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return S3Bucket(s3_server, name, client)
