"""`kubetune route` (run the router) and `kubetune route calibrate` (pick its threshold).

    kubetune route --backend large=http://large:8000 --backend small=http://small:8000 \
        [--strategy complexity|weighted|single] [--threshold 0.5] [--port 8000] [--api-key-file F]
        [--max-body-bytes 8388608]
    kubetune route calibrate --backend large=URL --backend small=URL --eval eval.jsonl [--target 0.95]

The `kubetune` dispatcher imports this module only for `route`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from kubetune_server.settings import MAX_BODY_BYTES, RouterSettings, env_default, read_api_key


def parse_backends(values: Sequence[str]) -> dict[str, str]:
    """`name=URL` pairs -> {name: URL}; raises ValueError naming a bad one."""
    backends: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"--backend must look like name=http://host:port, got {value!r}")
        if name in backends:
            raise ValueError(f"--backend {name} given twice")
        backends[name] = url
    return backends


def parse_weights(values: Sequence[str]) -> dict[str, float] | None:
    """`name=weight` pairs for the weighted strategy."""
    if not values:
        return None
    out: dict[str, float] = {}
    for value in values:
        name, _, weight = value.partition("=")
        try:
            out[name] = float(weight)
        except ValueError:
            raise ValueError(f"--weight must look like name=0.3, got {value!r}") from None
    return out


def parse_adapter_backends(values: Sequence[str]) -> dict[str, str]:
    """`adapter=backend` pairs: which backend holds each named adapter."""
    out: dict[str, str] = {}
    for value in values:
        adapter, _, backend = value.partition("=")
        if not adapter or not backend:
            raise ValueError(f"--adapter must look like adapter=backend, got {value!r}")
        out[adapter] = backend
    return out


def build_parser(prog: str) -> argparse.ArgumentParser:
    """Flags of `kubetune route`."""
    p = argparse.ArgumentParser(prog=prog, description="Route requests by complexity.")
    p.add_argument("--backend", action="append", default=[], help="name=URL (repeat)")
    p.add_argument("--strategy", choices=["complexity", "weighted", "single"], default="complexity")
    p.add_argument("--threshold", type=float, default=float(env_default("THRESHOLD", "0.5") or 0.5))
    p.add_argument("--large", default="large", help="backend for complex requests")
    p.add_argument("--small", default="small", help="backend for simple requests")
    p.add_argument("--default", default=None, help="backend for the single strategy")
    p.add_argument("--weight", action="append", default=[], help="name=weight (weighted)")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        help="adapter=backend (repeat): requests naming this adapter go to that backend only",
    )
    p.add_argument("--host", default=env_default("HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(env_default("PORT", "8000") or 8000))
    p.add_argument("--api-key-file", type=Path, default=None, help="bearer token clients send")
    p.add_argument("--timeout", type=float, default=300.0, help="backend timeout, seconds")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(env_default("MAX_BODY_BYTES", str(MAX_BODY_BYTES)) or MAX_BODY_BYTES),
        help="request bodies larger than this are refused with 413 while being read",
    )
    p.add_argument("--log-level", default="info")
    return p


def build_calibrate_parser(prog: str) -> argparse.ArgumentParser:
    """Flags of `kubetune route calibrate`."""
    p = argparse.ArgumentParser(prog=prog, description="Pick the complexity threshold.")
    p.add_argument("--backend", action="append", default=[], help="large=URL and small=URL")
    p.add_argument("--eval", type=Path, required=True, help="input/target JSONL")
    p.add_argument("--target", type=float, default=0.95, help="quality kept vs large-only")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--api-key-file", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "kubetune route") -> int:
    """Run the router, or `calibrate` when that is the first argument."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["calibrate"]:
        return calibrate_main(args_list[1:], prog=f"{prog} calibrate")
    parser = build_parser(prog)
    args = parser.parse_args(args_list)
    try:
        settings = RouterSettings(
            backends=parse_backends(args.backend),
            strategy=args.strategy,
            threshold=args.threshold,
            large=args.large,
            small=args.small,
            default=args.default,
            weights=parse_weights(args.weight),
            adapter_backends=parse_adapter_backends(args.adapter),
            host=args.host,
            port=args.port,
            api_key=read_api_key(args.api_key_file),
            timeout_s=args.timeout,
            max_body_bytes=args.max_body_bytes,
        )
    except (ValueError, ValidationError, OSError) as err:
        parser.error(str(err))
    _check_names(parser, settings)
    logging.basicConfig(level=args.log_level.upper())
    import uvicorn

    from kubetune_server.router_app import create_router_app

    app = create_router_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level.lower())
    return 0


def calibrate_main(argv: Sequence[str], prog: str = "kubetune route calibrate") -> int:
    """Print the threshold table and the pick."""
    import httpx

    from kubetune_server.calibrate import format_table, run_calibration

    parser = build_calibrate_parser(prog)
    args = parser.parse_args(argv)
    try:
        backends = parse_backends(args.backend)
        if set(backends) != {"large", "small"}:
            raise ValueError(
                f"give --backend large=URL and --backend small=URL, got {sorted(backends)}"
            )
        table, picked = run_calibration(
            args.eval,
            backends["large"],
            backends["small"],
            target=args.target,
            max_tokens=args.max_tokens,
            api_key=read_api_key(args.api_key_file),
        )
    except (ValueError, OSError, httpx.HTTPError) as err:
        parser.error(str(err))
    print(format_table(table, picked))
    if picked.threshold > 1:
        print(f"\npick: send everything to small (quality {picked.relative:.1%} of large-only)")
    else:
        print(
            f"\npick: --threshold {picked.threshold:.3f} ({picked.share_large:.0%} of calls to "
            f"large, quality {picked.relative:.1%} of large-only, target {args.target:.0%})"
        )
    return 0


def _check_names(parser: argparse.ArgumentParser, settings: RouterSettings) -> None:
    names = set(settings.backends)
    if settings.strategy == "complexity" and len(names) > 1:
        missing = {settings.large, settings.small} - names
        if missing:
            parser.error(
                f"complexity routing needs backends named {sorted(missing)}, got {sorted(names)}"
            )
    if settings.default is not None and settings.default not in names:
        parser.error(f"--default {settings.default!r} is not a backend ({sorted(names)})")
    for adapter, backend in settings.adapter_backends.items():
        if backend not in names:
            parser.error(f"--adapter {adapter}={backend}: {backend!r} is not a backend")
