"""`tunesmith push`: argument parser and handler. The main CLI registers it with `add_commands(subparsers)`.

The handler parses and calls push_run; bad input raises TunesmithError (exit code 2 in the main CLI).
huggingface_hub is imported only when the command runs, so `tunesmith --help` stays fast.
"""

from __future__ import annotations

import argparse

from tunesmith.models.safe_load import allow_pickle_arg


def _cmd_push(args) -> None:
    from tunesmith.push import push_run

    push_run(
        args.run_dir,
        args.repo,
        private=args.private,
        merged=args.merged,
        token=args.token,
        endpoint=args.endpoint,
        allow_pickle=args.allow_pickle,
    )


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `push` to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "push",
        help="publish a finished run to a Hugging Face Hub repository, with a model card",
        description="Create (or reuse) a model repository on the Hugging Face Hub and commit, in one commit, the "
        "run's adapter (or with --merged a merged export, checked against the run's model first), its resolved "
        "config.yaml (secrets masked) and a README.md model card: base model, method, data sizes, base vs tuned "
        "metrics, and the commands to reproduce and to load it.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder, e.g. runs/20260101-120000-run")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="the hub repository, e.g. alice/support-lora")
    p.add_argument(
        "--private", action="store_true", help="create the repository private (an existing one keeps its visibility)"
    )
    p.add_argument(
        "--merged",
        action="store_true",
        help="push merged full weights (tunesmith export --format merged, parity-checked) instead of the adapter",
    )
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="a write token; default: HF_TOKEN, then the token `huggingface-cli login` saved. Prefer those: a "
        "token on the command line is kept in shell history",
    )
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="the hub's address (default: HF_ENDPOINT or https://huggingface.co), for a mirror or a private hub",
    )
    allow_pickle_arg(p)  # --merged loads the run's model to merge and check it
    p.set_defaults(func=_cmd_push)
