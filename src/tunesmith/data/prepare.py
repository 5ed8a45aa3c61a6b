"""From `data:` config to normalised train/validation/test examples.

Separate files are used as given; splits that have no file are carved out of `train` with the ratios
of `data.split`, renormalised over the splits being carved (so `train` + `validation` files with
split 0.8/0.1/0.1 carve test as 1/9 of train).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.bad_records import BadRecords, normalise_skipping
from tunesmith.data.readers import read_records
from tunesmith.data.split import (
    SPLITS,
    find_repeats,
    held_out_minimums,
    overlaps,
    split_examples,
    split_stratified,
)
from tunesmith.errors import TunesmithError


@dataclass
class SplitSource:
    """Where a split's records came from, so a report shows which file was used."""

    path: str  # the file or folder read, absolute (a hub dataset: its id)
    read: int  # records read from it and kept (bad ones skipped, empty answers dropped)
    carved: bool = False  # cut out of the train source by data.split


@dataclass
class DataSplits:
    train: list  # the task's example type (chat: data.formats.Example)
    validation: list
    test: list
    format: str
    bad: BadRecords | None = None  # records skipped under data.on_bad_record: skip, over all files
    sources: dict[str, SplitSource] = field(default_factory=dict)  # by split name; a split of 0 has none
    warnings: list[str] = field(default_factory=list)  # printed when read (duplicates, small splits)

    def items(self):
        return (("train", self.train), ("validation", self.validation), ("test", self.test))

    def report(self) -> dict:
        """What a run records about its data (data_report.json): the format, the split sizes and their
        sources, what was skipped, the warnings."""
        bad = self.bad or BadRecords()
        return {
            "format": self.format,
            "records": {name: len(x) for name, x in self.items()},
            "sources": {name: vars(source) for name, source in self.sources.items()},
            **bad.report(),
            "warnings": list(self.warnings),
        }


def load_examples(
    source: str, data_cfg, normalise_records, split: str | None = None, reader=None, bad: BadRecords | None = None
) -> tuple[list, str]:
    """Read one source and turn its records into the task's examples: (examples, format name).
    `reader(source, data_cfg, split, bad)`, a task's own reader (image folders, IDX files), replaces
    read_records. Bad records go to `bad` (one per run, see prepare_splits); without it, to a new one
    that follows data.on_bad_record and prints what it skipped."""
    own = bad is None
    bad = BadRecords(data_cfg.on_bad_record) if bad is None else bad
    records = reader(source, data_cfg, split, bad) if reader else read_records(source, split=split, bad=bad)
    examples, fmt = normalise_skipping(records, data_cfg, normalise_records, bad)
    if own and bad.note():
        print(bad.note())
    return examples, fmt


def prepare_splits(data_cfg, seed: int, normalise_records, stratify_key=None, reader=None) -> DataSplits:
    """`normalise_records(records, data_cfg) -> (examples, format name)` is the task's reader;
    `stratify_key(example)`, when given, keeps each key's share in every carved split (None: random).

    1. Read each given source; drop its bad records (data.on_bad_record), empty answers included.
    2. Carve the splits that have no file out of train by data.split.
    3. Refuse a validation/test split too small to measure anything; warn about small ones and about
       records repeated within train or across splits (a test record also in train is leakage).
    """
    if not data_cfg.train:
        raise TunesmithError(
            "no training data given",
            where="data.train",
            fix="set data.train to a .jsonl/.json/.csv/.parquet file, e.g. examples/data/support_tickets.jsonl",
        )
    # 1. Read.
    bad = BadRecords(data_cfg.on_bad_record)
    given = {"train": data_cfg.train, "validation": data_cfg.validation, "test": data_cfg.test}
    loaded: dict[str, list] = {}
    fmt = ""
    for name, path in given.items():
        if not path:
            continue
        examples, found_fmt = load_examples(path, data_cfg, normalise_records, name, reader, bad)
        loaded[name] = drop_empty_answers(examples, bad)
        fmt = fmt or found_fmt  # the train file's format names the run's data
        if not loaded[name]:  # every record had an empty answer: a file given is never silently no split
            raise TunesmithError(
                f"no records left: every one was bad and skipped ({bad.count} in all; the first: "
                + "; ".join(bad.first)
                + ")",
                where=path,
                fix="fix the records as the messages say",
            )
    if bad.note():
        print(bad.note())
    sources = {name: SplitSource(_absolute(given[name]), len(loaded[name])) for name in loaded}

    # 2. Carve.
    ratios = dict(zip(SPLITS, data_cfg.split))
    carve = [name for name in ("validation", "test") if name not in loaded and ratios[name] > 0]
    carved_from = len(loaded["train"])
    if carve:
        share = ratios["train"] + sum(ratios[n] for n in carve)
        carve_ratios = tuple(ratios[n] / share if (n == "train" or n in carve) else 0.0 for n in SPLITS)
        train = loaded["train"]
        cut = (
            split_stratified(train, carve_ratios, seed, stratify_key)
            if stratify_key is not None
            else split_examples(train, carve_ratios, seed)
        )
        loaded["train"] = cut["train"]
        loaded.update({n: cut[n] for n in carve})
        sources.update({n: SplitSource(sources["train"].path, carved_from, carved=True) for n in carve})
    splits = DataSplits(loaded["train"], loaded.get("validation", []), loaded.get("test", []), fmt, bad, sources)

    # 3. Check.
    splits.warnings += _held_out_sizes(splits, data_cfg, carve, carved_from)
    splits.warnings += _duplicate_warnings(splits, carve)
    for warning in splits.warnings:  # stderr, as diagnostics: stdout holds a command's results
        print(f"warning: {warning}", file=sys.stderr)
    return splits


def _absolute(source: str) -> str:
    # A hub dataset id (`owner/name`) is no path on this machine; every path that exists is shown whole.
    return os.path.abspath(source) if os.path.exists(source) else source


# --- empty answers --------------------------------------------------------------------------------


def _empty_answer(example) -> int | None:
    """The number (from 1) of the first assistant turn that is empty or only whitespace, or None."""
    answers = [m for m in getattr(example, "messages", None) or [] if m["role"] == "assistant"]
    return next((i for i, m in enumerate(answers, start=1) if not m["content"].strip()), None)


def drop_empty_answers(examples: list, bad: BadRecords) -> list:
    """Chat examples with an empty assistant answer are bad records (data.on_bad_record): trained on, it
    teaches the model to reply with nothing (or, at the end of a turn, to stop at once), and as a test
    reference it scores every real answer as wrong. Only data a run learns from or is scored on comes
    here; `predict` reads records whose answer is empty on purpose."""
    empty = [(e, n) for e in examples if (n := _empty_answer(e)) is not None]
    if not empty:
        return examples
    fix = "write the answer or remove the record; data.on_bad_record: skip leaves such records out (and counts them)"
    if bad.policy != "skip":
        first, number = empty[0]
        also = (
            f"; {len(empty)} records have one, at " + _locations([e.where for e, _ in empty]) if len(empty) > 1 else ""
        )
        raise TunesmithError(
            f"assistant answer {number} is empty: training on it teaches the model to reply with nothing{also}",
            where=first.where,
            fix=fix,
        )
    for example, number in empty:
        bad.drop(TunesmithError(f"assistant answer {number} is empty", where=example.where, fix=fix))
    dropped = {id(e) for e, _ in empty}
    return [e for e in examples if id(e) not in dropped]


def _locations(wheres: list[str], shown: int = 10) -> str:
    """`file: lines 3, 9, 14 and 4 more`: locations that share a file, by their line (or [i], row i)."""
    files = {where.rsplit(":", 1)[0] for where in wheres if ":" in where}
    if len(files) != 1:
        listed = ", ".join(wheres[:shown])
    else:
        listed = f"{files.pop()}: " + ", ".join(where.rsplit(":", 1)[1] for where in wheres[:shown])
    return listed + (f" and {len(wheres) - shown} more" if len(wheres) > shown else "")


# --- small held-out splits -----------------------------------------------------------------------


def _held_out_sizes(splits: DataSplits, data_cfg, carved: list[str], carved_from: int) -> list[str]:
    """Refuse (one TunesmithError for all of them) validation/test splits too small to measure anything;
    return a warning for each that measures only coarsely. An empty split (share 0) is no split: fine.
    The limits are data/split.py's (REFUSE_BELOW, WARN_BELOW) unless the example type declares its own."""
    too_small, warnings = [], []
    for name, examples in list(splits.items())[1:]:
        n = len(examples)
        if not n:
            continue
        refuse_below, warn_below = held_out_minimums(examples[0])
        origin = (
            f"carved by data.split out of the {carved_from} records of {splits.sources[name].path}"
            if name in carved
            else f"the file {splits.sources[name].path}"
        )
        if n < refuse_below:
            too_small.append((name, n, (refuse_below, warn_below), origin))
        elif n < warn_below:
            warnings.append(
                f"the {name} split has only {n} records ({origin}): a score on it is uncertain by about "
                f"+-{_standard_error(n):.0f} points (the standard error of a 50% score); {warn_below} or more "
                f"bring that under +-{_standard_error(warn_below):.0f}"
            )
    if too_small:
        fewest = min(n for _, n, _, _ in too_small)
        said = "; ".join(
            f"the {name} split has {n} record{'s' if n != 1 else ''} ({origin})" for name, n, _, origin in too_small
        )
        raise TunesmithError(
            f"{said}: a score on {'it' if len(too_small) == 1 else 'them'} moves in steps of {100 / fewest:.0f} "
            "points, which measures nothing",
            where="data.split" if any(name in carved for name, *_ in too_small) else f"data.{too_small[0][0]}",
            fix=_small_split_fix(too_small, data_cfg, carved, carved_from),
        )
    return warnings


def _standard_error(n: int) -> float:
    """Of a score that counts right answers, at 50% (its largest), in points: 100 * sqrt(0.25 / n)."""
    return 50 / math.sqrt(n)


def _small_split_fix(too_small: list, data_cfg, carved: list[str], carved_from: int) -> str:
    # The limits of the example type being checked (held_out_minimums), not data/split.py's defaults.
    needed = max(refuse_below for _, _, (refuse_below, _), _ in too_small)
    enough = max(warn_below for _, _, (_, warn_below), _ in too_small)
    options = []
    carved_small = [name for name, *_ in too_small if name in carved]
    if carved_small:
        ratios = dict(zip(SPLITS, data_cfg.split))
        # The splits are cut at their data.split shares renormalised over train and the carved splits.
        total = ratios["train"] + sum(ratios[name] for name in carved)
        records = max(math.ceil(needed * total / ratios[name]) for name in carved_small)
        options.append(f"add data (about {records} records in all at these ratios)")
        raised = dict(ratios)
        for name in carved_small:
            raised[name] = max(ratios[name], math.ceil(round(needed / carved_from * total * 100, 6)) / 100)
        raised["train"] = round(ratios["train"] - sum(raised[n] - ratios[n] for n in carved_small), 2)
        if raised["train"] >= 0.5:  # offered only while train keeps most of the data
            shares = "shares" if len(carved_small) > 1 else "share"
            options.append(f"raise the {shares}: data.split: [" + ", ".join(f"{raised[s]:g}" for s in SPLITS) + "]")
    files = [name for name, *_ in too_small if name not in carved]
    options += [f"add records to data.{name}" for name in files]
    split_names = " and ".join(name for name, *_ in too_small)
    options.append(
        f"set the {split_names} share{'s' if len(too_small) > 1 else ''} in data.split to 0 to have none"
        + "".join(f" (and remove data.{name})" for name in files)
    )
    return (
        f"give {'each' if len(too_small) > 1 else 'it'} at least {needed} records ({enough} or more for a score within "
        f"+-{_standard_error(enough):.0f} points): " + ", or ".join(options)
    )


# --- repeated records -----------------------------------------------------------------------------


def _duplicate_warnings(splits: DataSplits, carved: list[str]) -> list[str]:
    """Records repeated within train (they weigh twice) and across splits (leakage: a record scored in
    validation or test that training saw makes the score overstate what the model learned)."""
    warnings = []
    repeats = find_repeats(splits.train)
    if repeats.first is not None:
        count, (later, earlier) = repeats.count, repeats.first
        warnings.append(
            f"the train split holds {count} record{'s' if count != 1 else ''} that repeat an earlier one "
            f"(e.g. {later} repeats {earlier}): each repeat counts again in training; remove the "
            "repeats unless that weighting is intended"
        )
    for overlap in overlaps(dict(splits.items())):
        fix = (
            f"remove the repeated records from {splits.sources['train'].path}; they are carved into both splits"
            if overlap.later in carved
            else f"remove them from one of the files ({splits.sources[overlap.later].path})"
        )
        warnings.append(
            f"{overlap.count} record{'s' if overlap.count != 1 else ''} of the {overlap.later} split also "
            f"appear{'s' if overlap.count == 1 else ''} in the {overlap.earlier} split (e.g. {overlap.example[0]} "
            f"= {overlap.example[1]}): the {overlap.later} score is measured partly on what "
            + ("training saw" if overlap.earlier == "train" else f"the {overlap.earlier} split already holds")
            + f", so it overstates the model; {fix}"
        )
    return warnings


def save_examples(rows: list[dict], path: Path) -> None:
    """Write a split as JSONL in the task's canonical columns, so later commands score the same records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
