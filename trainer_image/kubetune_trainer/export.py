"""`kubetune export`: merge a trained adapter into its base model and save a standalone model.

    kubetune export --adapter out/adapter --merge --out merged/ [--model BASE] [--dtype bf16|fp32]

The base model is read from the adapter's config (`base_model_name_or_path`) unless --model is
given. LoRA and QLoRA merge into the weights (QLoRA's 4-bit base is loaded unquantized for the
merge); prefix-tuning and the bottleneck adapter cannot be folded into weights, so they are
refused with a reason. The merged model loads with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def base_model_of(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(config["base_model_name_or_path"])


def export_merged(
    adapter_dir: Path, out_dir: Path, *, base: str | None = None, dtype: str = "fp32"
) -> Path:
    """Load base + adapter, merge, save model and tokenizer to out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.methods import load_adapter, merge_and_unload

    name = base or base_model_of(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=getattr(torch, DTYPES[dtype]))
    merged = merge_and_unload(load_adapter(model, adapter_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    tokenizer_src = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else Path(name)
    AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None, prog: str = "kubetune export") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--adapter",
        required=True,
        type=Path,
        help="adapter folder (kubetune train's <output>/adapter)",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the merged model")
    p.add_argument(
        "--merge", action="store_true", help="merge the adapter into the weights (required for now)"
    )
    p.add_argument(
        "--model", default=None, help="base model (default: the adapter's base_model_name_or_path)"
    )
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the saved weights"
    )
    args = p.parse_args(argv)
    if not args.merge:
        p.error("--merge is required: export writes a merged model")
    try:
        out = export_merged(args.adapter, args.out, base=args.model, dtype=args.dtype)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote merged model to {out}")
    return 0
