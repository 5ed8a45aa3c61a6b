"""`data.on_bad_record`: a record that cannot be used stops the run at the first (error, the default),
or is dropped, counted and named among the first few (skip).

Readers hand each record they cannot parse (a JSON line, a CSV row, a CoNLL sentence, an image-table
row) to `drop`; `normalise_skipping` finds the records a task's normalisation refuses. A problem of the
whole file (not UTF-8, not Parquet) or of the config (data.columns) is never skipped: it is not one
record's, and skipping it would silently train on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.errors import TunesmithError

SHOWN = 5  # locations kept for the report; the count covers all


@dataclass
class BadRecords:
    policy: str = "error"  # data.on_bad_record
    count: int = 0
    first: list[str] = field(default_factory=list)  # "file:LINE: what is wrong", the first SHOWN

    def drop(self, error: TunesmithError) -> None:
        """Raise `error` (policy error), or count the record it names and go on (policy skip)."""
        if self.policy != "skip":
            raise error
        self.count += 1
        if len(self.first) < SHOWN:
            self.first.append(f"{error.where}: {error.message}")

    def report(self) -> dict:
        return {"on_bad_record": self.policy, "skipped": self.count, "first": list(self.first)}

    def note(self) -> str | None:
        if not self.count:
            return None
        return f"note: skipped {self.count} bad record(s) (data.on_bad_record: skip); the first:\n  " + "\n  ".join(
            self.first
        )


def drop(bad: BadRecords | None, error: TunesmithError) -> None:
    """`bad.drop(error)`; without a BadRecords (a caller that does not skip) the error is raised."""
    if bad is None:
        raise error
    bad.drop(error)


def _source(where: str) -> str:
    return where.rsplit(":", 1)[0] if ":" in where else where


def normalise_skipping(records: list, data_cfg, normalise_records, bad: BadRecords | None):
    """`normalise_records(records, data_cfg)` -> (examples, format name), dropping under skip every
    record that an error names.

    1. All records at once: with no bad record (the usual case) this is the only pass.
    2. Each record alone: the records that are bad by themselves, in one linear pass. An error naming
       the record or its file is the record's (a lone record whose columns fit no format); any other
       (data.columns, data.format) is the config's and is raised.
    3. The survivors together: records that are bad only beside others (a second data format in one
       file, tags with and without B-/I- prefixes), dropped one per round.
    """
    try:
        return normalise_records(records, data_cfg)
    except TunesmithError:
        if bad is None or bad.policy != "skip":
            raise
    kept = []
    for record in records:  # 2.
        try:
            normalise_records([record], data_cfg)
        except TunesmithError as exc:
            if exc.where not in (record.where, _source(record.where)):
                raise
            bad.drop(TunesmithError(exc.message, where=record.where, fix=exc.fix))
            continue
        kept.append(record)
    while kept:  # 3.
        try:
            return normalise_records(kept, data_cfg)
        except TunesmithError as exc:
            index = next((i for i, r in enumerate(kept) if r.where == exc.where), None)
            if index is None:
                raise
            bad.drop(exc)
            kept.pop(index)
    raise TunesmithError(
        f"every record is bad: skipped {bad.count} (data.on_bad_record: skip); the first: " + "; ".join(bad.first),
        where=_source(records[0].where) if records else "data.train",
        fix="fix the records as the first messages say",
    )
