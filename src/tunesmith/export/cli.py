"""`tunesmith export`: argument parser and handler. The main CLI registers it with `add_commands(subparsers)`.

The handler parses and calls export_run; bad input raises TunesmithError (exit code 2 in the main CLI).
Format names come from the registry, which imports no format module, so `--help` stays fast.
"""

from __future__ import annotations

import argparse

from tunesmith.export import FORMATS
from tunesmith.models.safe_load import allow_pickle_arg


def _cmd_export(args) -> None:
    from tunesmith.export import export_run

    export_run(
        args.run_dir,
        args.format,
        args.output,
        samples=args.samples,
        options={"allow_pickle": args.allow_pickle, "quantize": args.quantize, "ollama": args.ollama},
    )


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `export` to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="export a finished run (merged weights, GGUF for llama.cpp/Ollama, ONNX), checked against the run's model",
        description="Write a finished run in another format, load it back in the runtime that will use it, "
        "and compare its outputs with the run's own model on held-out inputs from the run's test split. "
        "The figures and tolerances are printed and written to export.json next to the files; an export "
        "outside its tolerance fails (exit code 2) and its files are kept.",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a finished run's folder, e.g. runs/20260101-120000-run (printed by train)"
    )
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}")
    p.add_argument(
        "--output",
        required=True,
        metavar="PATH",
        help="folder to write (must not exist or be empty); for gguf also a file name, e.g. out/model.gguf",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="held-out test examples the parity check compares on (default 8; more: slower, a surer maximum)",
    )
    p.add_argument(
        "--quantize",
        metavar="KIND",
        help="gguf: f32, f16 (default), bf16, q8_0, q4_0, q4_k_m, q5_k_m; onnx: int8 also writes model.int8.onnx "
        "(dynamic int8 weights), its agreement and accuracy reported beside the float model's",
    )
    p.add_argument(
        "--ollama",
        action="store_true",
        help="gguf: also write an Ollama Modelfile (FROM, TEMPLATE rendering the run's chat template, SYSTEM, stop "
        "tokens); then `ollama create NAME -f out/Modelfile`",
    )
    allow_pickle_arg(p)
    p.set_defaults(func=_cmd_export)
