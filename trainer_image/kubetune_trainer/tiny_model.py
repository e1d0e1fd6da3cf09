"""Random-weight Qwen3 checkpoints for tests and benchmarks: `kubetune tiny-model`.

Writes a real `Qwen3ForCausalLM` (architecture from a `Qwen3Config`, random weights) plus a
tokenizer into a directory that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load like a hub checkpoint. Two vocabularies:

- `small`: a byte-level BPE (~2k ranks) trained deterministically on the bundled Chinese/English
  credit-card FAQ sample `templates/small_vocab_corpus.txt`, followed by Qwen3's 26 added tokens,
  so chat formatting and control tokens behave exactly as with Qwen3 (the ids differ).
- `qwen3`: the genuine Qwen3 tokenizer (`qwen3_tokenizer.build_qwen3_tokenizer`).

Both get Qwen3's chat template. Sizes: `tiny` (unit and integration tests), `mid` (~100M
parameters with the Qwen3 vocabulary, for serving benchmarks) and `8b-shape` (Qwen3-8B's real
config; never allocated here: a GPU script calls `qwen3_config("8b-shape", ...)` and builds it on
its own device). Callers: the `kubetune tiny-model` subcommand and `tests/conftest.py`.

    kubetune tiny-model --out /tmp/tiny [--vocab small|qwen3] [--size tiny|mid] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from kubetune_trainer import qwen3_tokenizer as qt

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, Qwen3Config

Vocab = Literal["small", "qwen3"]
Size = Literal["tiny", "mid", "8b-shape"]

SMALL_VOCAB_TARGET = 3072  # upper bound; the sample corpus yields fewer merges than this
SMALL_CORPUS = Path(__file__).parent / "templates" / "small_vocab_corpus.txt"
QWEN3_ROPE_THETA = 1_000_000.0
VOCAB_PAD_MULTIPLE = 64  # small vocab: embedding rows rounded up, as Qwen pads 151,669 to 151,936


@dataclass(frozen=True)
class Qwen3Shape:
    """The size-dependent numbers of a Qwen3 dense config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tie_embeddings: bool
    max_positions: int = 40_960
    # Init std. Real checkpoints' embedding rows have a norm of about 1-2; with hidden size 64
    # the default 0.02 gives 0.16, which caps the logits (tied head, frozen norm) so a tiny
    # model could not memorise anything with a PEFT method. 0.2 gives real-model-like norms.
    init_std: float = 0.02


SHAPES: dict[str, Qwen3Shape] = {
    # Tied embeddings and 40,960 positions, as Qwen3-0.6B.
    "tiny": Qwen3Shape(64, 2, 4, 2, 16, 128, tie_embeddings=True, init_std=0.2),
    "mid": Qwen3Shape(512, 8, 8, 4, 64, 1536, tie_embeddings=True),
    # Qwen3-8B's config.json.
    "8b-shape": Qwen3Shape(4096, 36, 32, 8, 128, 12_288, tie_embeddings=False),
}


def qwen3_config(
    size: Size, vocab_size: int, *, bos_id: int = 151_643, eos_id: int = 151_645
) -> Qwen3Config:
    """A `Qwen3Config` of the named size; ids default to the genuine Qwen3 vocabulary's."""
    from transformers import Qwen3Config

    if size not in SHAPES:
        raise ValueError(f"size must be one of {sorted(SHAPES)}, got {size!r}")
    shape = SHAPES[size]
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions,
        max_window_layers=shape.layers,
        tie_word_embeddings=shape.tie_embeddings,
        initializer_range=shape.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": QWEN3_ROPE_THETA},
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        sliding_window=None,
        use_sliding_window=False,
    )


def train_small_backend(corpus: Path = SMALL_CORPUS) -> Tokenizer:
    """Train the small byte-level BPE on the bundled sample (deterministic); add Qwen3's tokens."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    backend = Tokenizer(BPE(fuse_unk=False, byte_fallback=False))
    qt.apply_qwen_pipeline(backend)
    trainer = BpeTrainer(
        vocab_size=SMALL_VOCAB_TARGET,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    backend.train_from_iterator(lines, trainer=trainer)
    qt.add_qwen3_added_tokens(backend)
    return backend


def build_small_tokenizer() -> PreTrainedTokenizerFast:
    """The small tokenizer, Qwen3-style (same added tokens, eos, pad and chat template)."""
    return qt.wrap_qwen3_style(train_small_backend())


def write_tokenizer(out_dir: Path, vocab: Vocab) -> PreTrainedTokenizerFast:
    """Write the tokenizer of `vocab` into `out_dir` and return it as loaded from there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if vocab == "qwen3":
        shutil.copytree(qt.qwen3_tokenizer_dir(), out_dir, dirs_exist_ok=True)
    elif vocab == "small":
        qt.save_as_qwen2_tokenizer(build_small_tokenizer(), out_dir)
    else:
        raise ValueError(f"vocab must be 'small' or 'qwen3', got {vocab!r}")
    return qt.load_tokenizer(out_dir)


def model_vocab_size(tokenizer: PreTrainedTokenizerFast, vocab: Vocab) -> int:
    """Embedding rows: Qwen3's 151,936, or the small tokenizer's length rounded up."""
    if vocab == "qwen3":
        return qt.QWEN3_MODEL_VOCAB_SIZE
    return -(-len(tokenizer) // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def save_generation_config(model_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    """Qwen3's stop and pad ids (eos = `<|im_end|>` and `<|endoftext|>`); greedy by default."""
    from transformers import GenerationConfig

    end_of_text = qt.token_id(tokenizer, qt.PAD_TOKEN)
    im_end = qt.token_id(tokenizer, qt.EOS_TOKEN)
    config = GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[im_end, end_of_text], pad_token_id=end_of_text
    )
    config.save_pretrained(str(model_dir))


def count_parameters(model_dir: Path) -> int:
    """Distinct parameters of a saved checkpoint (tied embeddings counted once)."""
    from safetensors import safe_open

    total = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def build_tiny_model(
    out_dir: Path | str, *, vocab: Vocab = "small", size: Size = "tiny", seed: int = 0
) -> Path:
    """Write a random-weight Qwen3 checkpoint plus tokenizer into `out_dir`; return the path."""
    import torch
    from transformers import Qwen3ForCausalLM

    if size == "8b-shape":
        raise ValueError(
            "size '8b-shape' is not allocated on the CPU: build it from qwen3_config() on a GPU"
        )
    out = Path(out_dir)
    tokenizer = write_tokenizer(out, vocab)
    config = qwen3_config(
        size,
        model_vocab_size(tokenizer, vocab),
        bos_id=qt.token_id(tokenizer, qt.PAD_TOKEN),
        eos_id=qt.token_id(tokenizer, qt.EOS_TOKEN),
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(str(out))
    save_generation_config(out, tokenizer)
    return out


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `kubetune tiny-model`."""
    parser = argparse.ArgumentParser(
        prog="kubetune tiny-model", description="Write a random-weight Qwen3 checkpoint."
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write into")
    parser.add_argument("--vocab", choices=get_args(Vocab), default="small", help="default: small")
    parser.add_argument("--size", choices=["tiny", "mid"], default="tiny", help="default: tiny")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`kubetune tiny-model`: write a random-weight Qwen3 and print what was written."""
    args = build_parser().parse_args(argv)
    out = build_tiny_model(args.out, vocab=args.vocab, size=args.size, seed=args.seed)
    files = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file()))
    print(f"wrote Qwen3 {args.size} ({args.vocab} vocab) to {out}: {files}")
    print(f"parameters: {count_parameters(out):,}")
    return 0
