"""From `data:` config to normalised train/validation/test examples.

Separate files are used as given; splits that have no file are carved out of `train` with the ratios
of `data.split`, renormalised over the splits being carved (so `train` + `validation` files with
split 0.8/0.1/0.1 carve test as 1/9 of train).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.bad_records import BadRecords, normalise_skipping
from tunesmith.data.readers import read_records
from tunesmith.data.split import SPLITS, split_examples, split_stratified
from tunesmith.errors import TunesmithError


@dataclass
class DataSplits:
    train: list  # the task's example type (chat: data.formats.Example)
    validation: list
    test: list
    format: str
    bad: BadRecords | None = None  # records skipped under data.on_bad_record: skip, over all files

    def items(self):
        return (("train", self.train), ("validation", self.validation), ("test", self.test))

    def report(self) -> dict:
        """What a run records about its data (data_report.json): the format, the split sizes, what was skipped."""
        bad = self.bad or BadRecords()
        return {"format": self.format, "records": {name: len(x) for name, x in self.items()}, **bad.report()}


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
    `stratify_key(example)`, when given, keeps each key's share in every carved split (None: random)."""
    if not data_cfg.train:
        raise TunesmithError(
            "no training data given",
            where="data.train",
            fix="set data.train to a .jsonl/.json/.csv/.parquet file, e.g. examples/data/support_tickets.jsonl",
        )
    bad = BadRecords(data_cfg.on_bad_record)
    train, fmt = load_examples(data_cfg.train, data_cfg, normalise_records, "train", reader, bad)
    given = {"validation": data_cfg.validation, "test": data_cfg.test}
    loaded = {
        name: load_examples(path, data_cfg, normalise_records, name, reader, bad)[0]
        for name, path in given.items()
        if path
    }
    if bad.note():
        print(bad.note())

    ratios = dict(zip(SPLITS, data_cfg.split))
    carve = [name for name in ("validation", "test") if name not in loaded and ratios[name] > 0]
    if carve:
        share = ratios["train"] + sum(ratios[n] for n in carve)
        carve_ratios = tuple(ratios[n] / share if (n == "train" or n in carve) else 0.0 for n in SPLITS)
        cut = (
            split_stratified(train, carve_ratios, seed, stratify_key)
            if stratify_key is not None
            else split_examples(train, carve_ratios, seed)
        )
        train = cut["train"]
        loaded.update({n: cut[n] for n in carve})
    return DataSplits(train, loaded.get("validation", []), loaded.get("test", []), fmt, bad)


def save_examples(rows: list[dict], path: Path) -> None:
    """Write a split as JSONL in the task's canonical columns, so later commands score the same records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
