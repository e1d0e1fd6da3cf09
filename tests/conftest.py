"""Shared pytest fixtures for every tier (unit, integration, e2e).

Model fixtures are session-scoped and lazy: a test that does not name one pays nothing, and the
ones that do share a single build per session.

- `tiny_model_dir`: random-weight Qwen3 "tiny" with the small bundled vocabulary (a few seconds).
- `qwen3_tokenizer`: the genuine Qwen3 tokenizer (converted once, then loaded from
  `${KUBETUNE_CACHE:-~/.cache/kubetune}/tokenizers/` in about two seconds).
- `qwen3_tiny_model_dir`: the "tiny" model with the genuine Qwen3 vocabulary (151,936 rows).

The genuine-vocabulary fixtures skip, saying why, when `qwen.tiktoken` (from the `dashscope`
wheel, or `$KUBETUNE_QWEN_TIKTOKEN`) is not available. Add further shared fixtures here; keep
tier-specific ones in `tests/<tier>/conftest.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


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
