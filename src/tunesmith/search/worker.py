"""A worker process of `tunesmith search --workers N`: runs trials of a study folder until its quota.

`python -m tunesmith.search.worker STUDY_DIR [--index I] [--quota N] [--deadline UNIX_TIME]`. Any
number of these may run against one storage, on one machine or many; the storage hands out the trials.
"""

from __future__ import annotations

import argparse
import os
import sys

from tunesmith.errors import exit_code_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunesmith.search.worker")
    parser.add_argument("study_dir")
    parser.add_argument("--index", type=int, default=0, help="worker number, to seed its sampler apart")
    parser.add_argument("--quota", type=int, help="trials this worker runs at most")
    parser.add_argument("--deadline", type=float, help="no trial starts after this Unix time")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunesmith.search.study import work

    def run() -> None:
        ran = work(args.study_dir, quota=args.quota, deadline=args.deadline, index=args.index)
        print(f"worker {args.index}: ran {ran} trials")

    return exit_code_of(run)


if __name__ == "__main__":
    sys.exit(main())
