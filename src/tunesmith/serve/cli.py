"""`tunesmith serve`: argument parser and handler.

The main CLI registers it with `add_commands(subparsers)`. The handler checks the `serve` extra first and
only then imports the app, so `tunesmith --help` and every other command work without fastapi.
"""

from __future__ import annotations

import argparse
import os

from tunesmith.errors import TunesmithError
from tunesmith.extras import require
from tunesmith.models.safe_load import allow_pickle_arg

API_KEY_VARIABLE = "TUNESMITH_API_KEY"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1")
    return value


def cmd_serve(args: argparse.Namespace) -> None:
    require("fastapi", "serve", "tunesmith serve")
    require("uvicorn", "serve", "tunesmith serve")
    from tunesmith.serve.app import ServeSettings, serve

    # A key given on the command line shows in `ps` and the shell history: the variable is the quieter way.
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    if args.port > 65535:
        raise TunesmithError(f"port {args.port} is above 65535", where="--port", fix="choose a port such as 8000")
    settings = ServeSettings(api_key=api_key, max_batch=args.max_batch, max_tokens_limit=args.max_tokens_limit)
    serve(args.run_dir, host=args.host, port=args.port, settings=settings, allow_pickle=args.allow_pickle)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serve` to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API over a finished run (chat, completions, classify, rerank)",
        description="Serve a finished run over HTTP: /v1/chat/completions and /v1/completions for causal-LM "
        "runs, /v1/classify or /v1/rerank for text-classification runs, /v1/models and /health. "
        "See docs/serve.md.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder, e.g. runs/20260101-120000-run")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network: set a key)",
    )
    p.add_argument("--port", type=_positive, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--api-key",
        help=f"require `Authorization: Bearer KEY` on /v1 (default: ${API_KEY_VARIABLE}, else no key)",
    )
    p.add_argument(
        "--max-batch",
        type=_positive,
        default=8,
        help="greedy requests waiting together are generated in one batch of up to this many (default 8)",
    )
    p.add_argument(
        "--max-tokens-limit",
        type=_positive,
        default=1024,
        help="the largest max_tokens a request may ask for; above it the request gets 400 (default 1024)",
    )
    allow_pickle_arg(p)
    p.set_defaults(func=cmd_serve)
