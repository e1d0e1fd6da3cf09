"""`kubetune serve`: load a model (+ adapter), quantize it and serve the OpenAI-compatible API.

    kubetune serve --model BASE [--adapter DIR | --fine-tune-job NAME | --adapter NAME=DIR ...]
                   [--adapter-config FILE] [--enable-adapter-admin] [--quantization int8|none]
                   [--host 0.0.0.0] [--port 8000] [--max-batch-size 8] [--max-new-tokens 512]
                   [--max-queue 64] [--max-body-bytes 8388608] [--max-prompt-chars 500000]
                   [--api-key-file F]   (or env KUBETUNE_API_KEY)

The `kubetune` dispatcher imports this module only for `serve`. Flags left unset fall back to
`KUBETUNE_*` environment variables, then to the ModelDeployment defaults.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from kubetune_server.settings import (
    MAX_BODY_BYTES,
    MAX_PROMPT_CHARS,
    ServerSettings,
    env_default,
    read_api_key,
)


def _adapter(text: str) -> Path | str:
    """An s3:// URI stays a string (Path would fold its '//'); anything else is a folder."""
    return text if text.startswith("s3://") else Path(text)


def build_parser(prog: str = "kubetune serve") -> argparse.ArgumentParser:
    """Flags of `kubetune serve`."""
    p = argparse.ArgumentParser(prog=prog, description="Serve a Qwen3 model over an OpenAI API.")
    p.add_argument("--model", default=env_default("MODEL"), help="base model path (or hub id)")
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        help="DIR or s3:// URI: merge this adapter (one); NAME=DIR (repeatable): serve LoRA "
        "adapters unmerged, picked by the request's model",
    )
    p.add_argument(
        "--fine-tune-job", default=env_default("FINE_TUNE_JOB"), help="serve this job's adapter"
    )
    p.add_argument(
        "--adapter-config",
        type=Path,
        default=env_default("ADAPTER_CONFIG"),
        help="JSON file {name: dir}: the named adapters, reloaded when it changes",
    )
    p.add_argument(
        "--enable-adapter-admin",
        action="store_true",
        help="POST/DELETE /v1/adapters (behind the API key) load and unload adapters",
    )
    p.add_argument("--served-model-name", default=env_default("SERVED_MODEL_NAME"))
    p.add_argument(
        "--quantization", choices=["int8", "none"], default=env_default("QUANTIZATION", "int8")
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--host", default=env_default("HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(env_default("PORT", "8000") or 8000))
    p.add_argument(
        "--max-batch-size", type=int, default=int(env_default("MAX_BATCH_SIZE", "8") or 8)
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=int(env_default("MAX_NEW_TOKENS", "512") or 512)
    )
    p.add_argument("--max-queue", type=int, default=int(env_default("MAX_QUEUE", "64") or 64))
    p.add_argument(
        "--max-model-len", type=int, default=None, help="context cap (default: the model's)"
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(env_default("MAX_BODY_BYTES", str(MAX_BODY_BYTES)) or MAX_BODY_BYTES),
        help="request bodies larger than this are refused with 413 while being read",
    )
    p.add_argument(
        "--max-prompt-chars",
        type=int,
        default=int(env_default("MAX_PROMPT_CHARS", str(MAX_PROMPT_CHARS)) or MAX_PROMPT_CHARS),
        help="prompts (all messages together) longer than this are a 400, before tokenizing",
    )
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="batch collection window")
    p.add_argument("--api-key-file", type=Path, default=None, help="file holding the bearer token")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log-level", default="info")
    return p


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Validated settings; raises ValueError naming the bad flag."""
    if not args.model:
        raise ValueError("--model is required (or set KUBETUNE_MODEL)")
    merged, named = split_adapters(args.adapter or _env_adapter())
    return ServerSettings(
        model=args.model,
        adapter=merged,
        adapters=named,
        adapter_config=args.adapter_config,
        enable_adapter_admin=args.enable_adapter_admin,
        fine_tune_job=args.fine_tune_job,
        served_model_name=args.served_model_name,
        quantization=args.quantization,
        device=args.device,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_new_tokens=args.max_new_tokens,
        max_queue=args.max_queue,
        batch_wait_ms=args.batch_wait_ms,
        max_model_len=args.max_model_len,
        max_body_bytes=args.max_body_bytes,
        max_prompt_chars=args.max_prompt_chars,
        api_key=read_api_key(args.api_key_file),
        threads=args.threads,
    )


def split_adapters(values: list[str]) -> tuple[Path | str | None, dict[str, str]]:
    """`--adapter` values: (one folder to merge, or None; named adapters name -> folder)."""
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise ValueError("--adapter: give either one DIR (merged) or NAME=DIR for every adapter")
    if not named:
        if len(values) > 1:
            raise ValueError(f"--adapter DIR merges one adapter, got {len(values)}; use NAME=DIR")
        return (_adapter(values[0]) if values else None), {}
    out: dict[str, str] = {}
    for value in named:
        name, _, folder = value.partition("=")
        if not name or not folder:
            raise ValueError(f"--adapter NAME=DIR needs both, got {value!r}")
        if name in out:
            raise ValueError(f"--adapter name {name!r} is given twice")
        out[name] = folder
    return None, out


def _env_adapter() -> list[str]:
    value = env_default("ADAPTER")
    return [value] if value else []


def main(argv: Sequence[str] | None = None, prog: str = "kubetune serve") -> int:
    """Parse flags, build the app and run uvicorn until interrupted."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValueError, ValidationError, OSError) as err:
        parser.error(str(err))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import torch
    import uvicorn

    from kubetune_server.app import create_app

    if settings.threads:
        torch.set_num_threads(settings.threads)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level.lower())
    return 0
