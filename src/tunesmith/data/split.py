"""Deterministic train/validation/test splitting and duplicate counting."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import TunesmithError

__all__ = [
    "SPLITS",
    "REFUSE_BELOW",
    "WARN_BELOW",
    "split_examples",
    "find_repeats",
    "Repeats",
    "Overlap",
    "overlaps",
    "held_out_minimums",
]

SPLITS = ("train", "validation", "test")
_TOLERANCE = 1e-6

# How few records a validation or test split may hold. A score that counts records (accuracy, exact
# match, F1) moves in steps of 100/n points: below 5 records one record moves it by 25 points or more
# (1 record: 0 or 100%), so neither early stopping nor base-vs-tuned can read anything from it: refused.
# Its standard error near 50% is 50/sqrt(n) points: about +-22 at 5 records, +-9 at 30, so below 30 a
# 10-point difference between two runs is within noise: a warning.
REFUSE_BELOW = 5
WARN_BELOW = 30


def split_examples(
    examples: Sequence[Any],
    ratios: Sequence[float] = (0.8, 0.1, 0.1),  # three: _check_ratios refuses other lengths
    seed: int = 42,
) -> dict[str, list[Any]]:
    """Shuffle `examples` with `seed` and cut them into train/validation/test by `ratios`.

    The same input, ratios and seed always give the same split. Every split with a non-zero ratio
    gets at least one example. The input list is not modified. Returns all three keys; a split whose
    ratio is 0 is an empty list.
    """
    _check_ratios(ratios)
    n = len(examples)
    if n == 0:
        raise TunesmithError(
            "dataset is empty: there is nothing to split",
            where="data.train",
            fix="point data.train at a file with records",
        )
    wanted = sum(1 for r in ratios if r > 0)
    if n < wanted:
        raise TunesmithError(
            f"the dataset has {n} record(s) but the split {tuple(ratios)} needs at least {wanted} "
            "(one for each split with a non-zero ratio)",
            where="data.split",
            fix="add records, or set the validation/test ratios to 0",
        )
    counts = _counts(n, ratios)
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    result: dict[str, list[Any]] = {}
    start = 0
    for name, count in zip(SPLITS, counts):
        result[name] = shuffled[start : start + count]
        start += count
    return result


def split_stratified(examples: Sequence[Any], ratios=(0.8, 0.1, 0.1), seed: int = 42, key=None) -> dict[str, list]:
    """Like split_examples, but each group of equal `key(example)` is cut by the ratios on its own, so
    every split keeps the groups' shares (stratification). Rounding leftovers go to train; a split with
    a non-zero ratio still gets at least one example when there are enough."""
    _check_ratios(ratios)
    if not examples:
        return split_examples(examples, ratios, seed)  # raises the empty-dataset error
    groups: dict = {}
    for example in examples:
        groups.setdefault(key(example), []).append(example)
    result: dict[str, list[Any]] = {name: [] for name in SPLITS}
    rng = random.Random(seed)
    for group_key in sorted(groups, key=str):
        members = list(groups[group_key])
        rng.shuffle(members)
        n = len(members)
        sizes = [int(n * r) for r in ratios[1:]]
        start = 0
        cut = {"validation": sizes[0], "test": sizes[1]}
        for name in ("validation", "test"):
            result[name] += members[start : start + cut[name]]
            start += cut[name]
        result["train"] += members[start:]
    for name, ratio in zip(SPLITS[1:], ratios[1:]):
        if ratio > 0 and not result[name] and len(result["train"]) > 1:
            result[name].append(result["train"].pop())
    for name in SPLITS:
        rng.shuffle(result[name])
    return result


@dataclass(frozen=True)
class Repeats:
    """Examples whose content (messages or text) exactly repeats an earlier example's."""

    count: int
    first: tuple[str, str] | None  # (where, where of the earlier example it repeats) of the first; None: none


def find_repeats(examples: Sequence[Any]) -> Repeats:
    """How many examples repeat an earlier one, and the first that does, in one walk."""
    seen: dict = {}
    count, first = 0, None
    for example in examples:
        key = _content_key(example)
        if key in seen:
            count += 1
            if first is None:
                first = (example.where, seen[key])
        else:
            seen[key] = example.where
    return Repeats(count, first)


@dataclass(frozen=True)
class Overlap:
    """Records of the `later` split whose content is also in the `earlier` one (leakage)."""

    earlier: str
    later: str
    count: int
    example: tuple[str, str]  # (where in later, where in earlier) of the first such record


def overlaps(splits: dict[str, Sequence[Any]]) -> list[Overlap]:
    """For each pair of splits in SPLITS order (train-validation, train-test, validation-test), the records
    of the later one that repeat a record of the earlier one, compared by the normalised example's content:
    its messages or text, or what its type's `content_key` names (classification: text and text pair,
    whatever the label, since the same text under two labels leaks as much)."""
    found = []
    for i, earlier in enumerate(SPLITS):
        seen = {_content_key(e): e.where for e in splits.get(earlier, [])}
        for later in SPLITS[i + 1 :]:
            repeats = [(e.where, seen[k]) for e in splits.get(later, []) if (k := _content_key(e)) in seen]
            if repeats:
                found.append(Overlap(earlier, later, len(repeats), repeats[0]))
    return found


def held_out_minimums(example: Any) -> tuple[int, int]:
    """(refused below, warned below) for a validation/test split of examples like `example`: an example
    type whose held-out score is not a count of records declares its own `held_out_minimums`."""
    return getattr(example, "held_out_minimums", (REFUSE_BELOW, WARN_BELOW))


def _content_key(example: Any) -> tuple:
    if hasattr(example, "content_key"):
        return example.content_key()
    messages = getattr(example, "messages", None)
    if messages is not None:
        return ("messages", tuple((turn.get("role"), turn.get("content")) for turn in messages))
    return ("text", getattr(example, "text", None))


def _check_ratios(ratios: Sequence[float]) -> None:
    fix = "set data.split to three non-negative numbers that add up to 1, e.g. [0.8, 0.1, 0.1]"
    try:
        values = list(ratios)
    except TypeError:
        raise TunesmithError(
            f"split ratios must be a list of three numbers, got {ratios!r}", where="data.split", fix=fix
        ) from None
    if len(values) != 3 or not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in values
    ):
        raise TunesmithError(
            f"split ratios must be three numbers (train, validation, test), got {ratios!r}",
            where="data.split",
            fix=fix,
        )
    if any(r < 0 for r in values):
        raise TunesmithError(f"split ratios must not be negative, got {ratios!r}", where="data.split", fix=fix)
    if abs(sum(values) - 1.0) > _TOLERANCE:
        raise TunesmithError(
            f"split ratios must add up to 1, but {ratios!r} adds up to {sum(values):g}", where="data.split", fix=fix
        )


def _counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Sizes that add up to `n`: largest-remainder rounding, then at least 1 for non-zero ratios."""
    total = sum(ratios)  # within 1e-6 of 1; dividing keeps the floors from overshooting n
    exact = [r / total * n for r in ratios]
    counts = [math.floor(x) for x in exact]
    # Hand the leftover to the largest fractional parts (ties go to the earlier split).
    by_fraction = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_fraction[: n - sum(counts)]:
        counts[i] += 1
    for i, ratio in enumerate(ratios):
        if ratio > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: counts[j])  # has >= 2 since n >= non-zero splits
            counts[donor] -= 1
            counts[i] = 1
    return counts
