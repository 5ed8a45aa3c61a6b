"""Deterministic train/validation/test splitting and duplicate counting."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from tunesmith.errors import TunesmithError

__all__ = ["SPLITS", "split_examples", "find_duplicates"]

SPLITS = ("train", "validation", "test")
_TOLERANCE = 1e-6


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


def find_duplicates(examples: Sequence[Any]) -> int:
    """Count examples whose content (messages or text) exactly repeats an earlier example's."""
    seen: set = set()
    duplicates = 0
    for example in examples:
        key = _content_key(example)
        if key in seen:
            duplicates += 1
        else:
            seen.add(key)
    return duplicates


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
