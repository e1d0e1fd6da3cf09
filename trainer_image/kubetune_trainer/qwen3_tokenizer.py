"""The genuine Qwen3 tokenizer, built offline: no model hub needed.

Qwen3 uses the same 151,643 byte-level BPE ranks as every Qwen since Qwen-7B. Those ranks ship as
`resources/qwen.tiktoken` inside the Apache-2.0 PyPI wheel `dashscope`; this module converts them
into a Hugging Face fast tokenizer with Qwen2's pre-tokenizer regex and NFC normalizer, then adds
Qwen3's 26 control tokens (ids 151643..151668) and Qwen3's real chat template. Loaded back with
`AutoTokenizer`, the result is a `Qwen2Tokenizer`, exactly what `Qwen/Qwen3-8B` loads as.

Callers: `tiny_model` (vocab "qwen3" and, for the shared special-token list, vocab "small") and the
test fixtures in `tests/conftest.py`. The converted tokenizer is cached under
`${KUBETUNE_CACHE:-~/.cache/kubetune}/tokenizers/` keyed by a version string; the cache is an
optimisation only, and an unwritable cache falls back to a temporary directory.

Sources checked (public copies of Qwen3's `tokenizer_config.json` / `tokenizer.json`):
`akougkas/warpio-cli:warpio-docs/ai-docs/model_cards/qwen3:4b.md` for the added-token list, the
`special` flags and the tokenizer.json pipeline (NFC, isolated regex split, ByteLevel, no regex);
`templates/README.md` cites the sources of the chat template.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

#: Qwen2/Qwen3 pre-tokenizer split regex (digits are split one by one: `\p{N}`, not `\p{N}{1,3}`).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Qwen3's added tokens in id order; the first one gets id 151643 in the genuine vocabulary.
QWEN3_ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
#: Qwen3 marks the first 14 added tokens (up to `<|video_pad|>`) special; the rest are not.
QWEN3_NUM_SPECIAL = 14
#: `additional_special_tokens` in Qwen3's tokenizer_config.json: `<|im_start|>`..`<|video_pad|>`.
QWEN3_EXTRA_SPECIAL_TOKENS: tuple[str, ...] = QWEN3_ADDED_TOKENS[1:QWEN3_NUM_SPECIAL]

QWEN3_BPE_RANKS = 151_643
QWEN3_TOKENIZER_LEN = QWEN3_BPE_RANKS + len(QWEN3_ADDED_TOKENS)  # 151,669
QWEN3_MODEL_VOCAB_SIZE = 151_936  # embedding rows of every Qwen3 dense model
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
#: Qwen3-8B's tokenizer_config.json value.
QWEN3_MODEL_MAX_LENGTH = 131_072

#: Bump when the conversion changes so stale caches are not reused.
TOKENIZER_CACHE_VERSION = "qwen3-tokenizer-v1"
TIKTOKEN_ENV = "KUBETUNE_QWEN_TIKTOKEN"
#: tokenizer_config.json entries Qwen3 checkpoints carry beyond what `save_pretrained` writes.
QWEN2_TOKENIZER_CONFIG: dict[str, object] = {
    "tokenizer_class": "Qwen2Tokenizer",
    "add_prefix_space": False,
    "errors": "replace",
    "bos_token": None,
    "unk_token": None,
    "add_bos_token": False,
}
_TEMPLATE = Path(__file__).parent / "templates" / "qwen3_chat_template.jinja"


def qwen3_chat_template() -> str:
    """Qwen3's chat template (jinja, with `enable_thinking`), exactly as Qwen ships it."""
    return _TEMPLATE.read_text(encoding="utf-8")


def find_qwen_tiktoken() -> Path:
    """Locate `qwen.tiktoken`: `$KUBETUNE_QWEN_TIKTOKEN`, else inside the installed dashscope.

    The dashscope package is found without importing it (its import pulls in network clients).
    """
    override = os.environ.get(TIKTOKEN_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec("dashscope")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / "resources" / "qwen.tiktoken"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        "qwen.tiktoken not found: install the trainer extra's `dashscope` package "
        f"(it ships dashscope/resources/qwen.tiktoken) or set {TIKTOKEN_ENV}=/path/to/qwen.tiktoken"
    )


def load_qwen_ranks(path: Path | None = None) -> dict[bytes, int]:
    """The BPE ranks of `qwen.tiktoken`: one `base64(token) rank` pair per line."""
    lines = (path or find_qwen_tiktoken()).read_bytes().splitlines()
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in lines if ln)}
    if len(ranks) != QWEN3_BPE_RANKS:
        raise ValueError(f"qwen.tiktoken must hold {QWEN3_BPE_RANKS} ranks, got {len(ranks)}")
    return ranks


def qwen3_tiktoken_encoding(path: Path | None = None) -> tiktoken.Encoding:
    """A `tiktoken.Encoding` over the same ranks and added tokens: the reference implementation."""
    import tiktoken

    return tiktoken.Encoding(
        name="qwen3",
        pat_str=QWEN_PRETOKENIZE_REGEX,
        mergeable_ranks=load_qwen_ranks(path),
        special_tokens={tok: QWEN3_BPE_RANKS + i for i, tok in enumerate(QWEN3_ADDED_TOKENS)},
    )


def add_qwen3_added_tokens(backend: Tokenizer) -> None:
    """Append Qwen3's 26 added tokens, in Qwen3's order and with its `special` flags."""
    from tokenizers import AddedToken

    for i, content in enumerate(QWEN3_ADDED_TOKENS):
        token = AddedToken(content, normalized=False, special=i < QWEN3_NUM_SPECIAL)
        if i < QWEN3_NUM_SPECIAL:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])


def wrap_qwen3_style(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a backend that already holds Qwen3's added tokens with Qwen3's settings and template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(QWEN3_EXTRA_SPECIAL_TOKENS),
        chat_template=qwen3_chat_template(),
        model_max_length=QWEN3_MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )


def save_as_qwen2_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """`save_pretrained`, then name the class `Qwen2Tokenizer` as Qwen3 checkpoints do."""
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(QWEN2_TOKENIZER_CONFIG)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer directory the way the trainer and server will (`AutoTokenizer`)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"{path} must hold a fast (tokenizers) tokenizer, got {type(tokenizer)}")
    return tokenizer


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of one token the vocabulary must contain, e.g. `<|im_end|>`."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise KeyError(f"token {token!r} is not in the vocabulary")
    return found


def apply_qwen_pipeline(backend: Tokenizer) -> None:
    """Give a byte-level BPE backend Qwen's pipeline: NFC, regex split, byte-level without regex."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    split = pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False)
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(**byte_level)])
    backend.post_processor = processors.ByteLevel(**byte_level)
    backend.decoder = decoders.ByteLevel(**byte_level)


def convert_qwen_ranks(path: Path) -> Tokenizer:
    """Convert `qwen.tiktoken` into a `tokenizers` BPE (vocab + merges) with Qwen's pipeline."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=str(path)).extract_vocab_merges_from_model(
        str(path)
    )
    backend = Tokenizer(BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    apply_qwen_pipeline(backend)
    add_qwen3_added_tokens(backend)
    return backend


def _cache_root() -> Path:
    default = Path.home() / ".cache" / "kubetune"
    return Path(os.environ.get("KUBETUNE_CACHE") or default) / "tokenizers"


@cache
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def write_qwen3_tokenizer(out_dir: Path, ranks_path: Path | None = None) -> Path:
    """Convert the ranks and save the tokenizer into `out_dir` (no caching)."""
    tokenizer = wrap_qwen3_style(convert_qwen_ranks(ranks_path or find_qwen_tiktoken()))
    save_as_qwen2_tokenizer(tokenizer, out_dir)
    return out_dir


def qwen3_tokenizer_dir() -> Path:
    """A directory holding the converted tokenizer: the cached one, built there if missing."""
    ranks_path = find_qwen_tiktoken()
    target = _cache_root() / f"{TOKENIZER_CACHE_VERSION}-{_file_digest(ranks_path)}"
    if (target / "tokenizer_config.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    except OSError:  # cache not writable: build somewhere private and use that
        return write_qwen3_tokenizer(Path(tempfile.mkdtemp(prefix="qwen3-tokenizer-")), ranks_path)
    write_qwen3_tokenizer(staging, ranks_path)
    try:
        staging.rename(target)  # atomic: a concurrent builder either wins or finds ours
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """The genuine Qwen3 tokenizer (len 151,669; eos `<|im_end|>`, pad `<|endoftext|>`)."""
    return load_tokenizer(qwen3_tokenizer_dir())
