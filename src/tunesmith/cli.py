"""The `tunesmith` command. Each subcommand parses its arguments and calls one library function.

A TunesmithError (bad input the user can fix) prints its message and fix and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from tunesmith import __version__
from tunesmith.errors import TunesmithError, exit_code_of
from tunesmith.export.cli import add_commands as add_export_commands
from tunesmith.methods import METHODS
from tunesmith.models.safe_load import allow_pickle_arg
from tunesmith.plan.cli import add_commands as add_plan_commands
from tunesmith.push.cli import add_commands as add_push_commands
from tunesmith.runs.cli import add_commands as add_runs_commands
from tunesmith.search.cli import add_commands as add_search_commands
from tunesmith.serve.cli import add_commands as add_serve_commands
from tunesmith.taskcards import EXAMPLE_DATA, TASKS


def _cmd_init(args) -> None:
    from tunesmith.config import load_config, render_template

    start = dict(TASKS[args.task].init_settings)  # a packaged model and the shipped example data
    if args.method:  # the task's settings of another method's fields do not apply to this one
        start = {k: v for k, v in start.items() if not k.startswith("method.")} | {"method.name": args.method}
    config = load_config(None, [f"task={args.task}"] + [f"{k}={v}" for k, v in start.items()])
    notes = []
    if config.data.train and config.data.train.startswith(str(EXAMPLE_DATA)):
        # The template trains as printed (on the packaged example data), which a newcomer's first
        # `validate` needs; the note says which line to change.
        notes.append("data.train points at tunesmith's packaged example data: replace it with your file.")
    print(render_template(config, notes=notes), end="")


def _load(args):
    from tunesmith.config import load_config

    return load_config(args.config, args.set)


def _cmd_validate(args) -> None:
    from tunesmith.pipeline import validate

    print(validate(_load(args)))
    print("\nconfig, model and data are valid")


def _cmd_train(args) -> None:
    from tunesmith.pipeline import train

    if args.config is None and args.resume is None:
        raise TunesmithError("give a config file or --resume RUN_DIR", fix="tunesmith train run.yaml")
    if args.allow_pickle:  # the config field it stands for; a resumed run keeps the value it was started with
        args.set = [*args.set, "model.allow_pickle=true"]
    config = _load(args) if args.config else None
    train(config, resume=args.resume, force=args.force)


def _cmd_eval(args) -> None:
    from tunesmith.pipeline import evaluate_run

    evaluate_run(args.run_dir, test_file=args.test, max_samples=args.max_samples, allow_pickle=args.allow_pickle)


def _cmd_predict(args) -> None:
    from tunesmith.pipeline import predict

    count = predict(
        args.run_dir, args.input, args.output, max_new_tokens=args.max_new_tokens, allow_pickle=args.allow_pickle
    )
    print(f"wrote {count} predictions to {args.output}")


def _cmd_merge(args) -> None:
    from tunesmith.pipeline import merge

    merge(args.run_dir, args.output, allow_pickle=args.allow_pickle)


RUN_DIR_HELP = "a finished run's folder, e.g. runs/20260101-120000-run (printed by `tunesmith train`)"


def _cmd_chat(args) -> None:
    from tunesmith.chat import chat_loop

    chat_loop(args.run_dir, system=args.system, max_new_tokens=args.max_new_tokens, allow_pickle=args.allow_pickle)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune pretrained models to your use case.")
    parser.add_argument(
        "--version", action="version", version=f"tunesmith {__version__}", help="print the version and exit"
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do; `tunesmith COMMAND --help` lists its arguments",
    )

    p = sub.add_parser("init", help="print a commented starter config")
    p.add_argument("--task", default="chat", choices=list(TASKS), help="task of the config")
    p.add_argument("--method", choices=list(METHODS), help="method of the config (default: the task's starter method)")
    p.set_defaults(func=_cmd_init)

    def config_args(p, optional=False):
        p.add_argument("config", nargs="?" if optional else None, help="run config YAML")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)",
        )

    p = sub.add_parser("validate", help="check config, model and data; print the data report")
    config_args(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", help="fine-tune; --resume RUN_DIR continues a stopped run")
    config_args(p, optional=True)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="train even when the memory estimate says it will not fit")
    allow_pickle_arg(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval", help="base vs tuned on the run's test split; each evaluation is kept as eval-N.json in the run"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument(
        "--test", metavar="FILE", help="another test file instead of the run's saved split (records with answers)"
    )
    p.add_argument(
        "--max-samples", type=int, metavar="N", help="score at most this many examples (default: eval.max_samples)"
    )
    allow_pickle_arg(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="answer every record of a file with the tuned model")
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="records to answer: JSONL/JSON/CSV/Parquet or a .txt with one prompt a line (token classification: "
        "one sentence a line, or a CoNLL file of words and tags); chat takes messages ending in a user turn, prompt, "
        "text or instruction(+input) records; answers are optional (docs/commands.md)",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="OUT",
        help="JSONL file to write, or for text-to-image a folder of images (must not exist)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="longest answer in tokens (default: the run's eval.max_new_tokens)",
    )
    allow_pickle_arg(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("chat", help="talk to the tuned model in the terminal (/help lists its commands)")
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument(
        "--system", metavar="TEXT", help="system prompt for the conversation (/system TEXT changes it while chatting)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=256, metavar="N", help="longest answer in tokens (default: %(default)s)"
    )
    allow_pickle_arg(p)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("merge", help="merge the adapter into full safetensors weights")
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument("--output", required=True, help="folder to write (must not exist or be empty)")
    allow_pickle_arg(p)
    p.set_defaults(func=_cmd_merge)

    add_export_commands(sub)  # export: a finished run in another format, checked against the run's own model
    add_serve_commands(sub)  # serve: an OpenAI-compatible HTTP API over a finished run
    add_push_commands(sub)  # push: a finished run to a Hugging Face Hub repo, with a model card
    add_plan_commands(sub)  # estimate, recommend: read model configs only, never weights
    add_runs_commands(sub)  # runs, runs compare: read the runs index and run folders only
    add_search_commands(sub)  # search, autotrain: many pipeline.train runs on an Optuna study
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code_of(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
