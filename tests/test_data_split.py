"""Tests for tunesmith.data.split: deterministic splitting, ratio checks and duplicate counting."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import Example
from tunesmith.data.split import SPLITS, Repeats, find_repeats, split_examples
from tunesmith.errors import TunesmithError


def test_splits_constant():
    assert SPLITS == ("train", "validation", "test")


def test_default_ratios_partition_everything():
    items = list(range(100))
    parts = split_examples(items)
    assert set(parts) == set(SPLITS)
    assert [len(parts[s]) for s in SPLITS] == [80, 10, 10]
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == items


def test_same_seed_same_split_and_input_untouched():
    items = list(range(50))
    first = split_examples(items, seed=7)
    assert split_examples(list(range(50)), seed=7) == first
    assert items == list(range(50))
    assert first["train"] != list(range(40))  # it did shuffle


def test_different_seed_different_split():
    items = list(range(50))
    assert split_examples(items, seed=1)["train"] != split_examples(items, seed=2)["train"]


def test_split_matches_random_random_shuffle():
    import random

    items = list(range(20))
    expected = list(items)
    random.Random(3).shuffle(expected)
    parts = split_examples(items, (0.5, 0.25, 0.25), seed=3)
    assert parts["train"] + parts["validation"] + parts["test"] == expected


def test_zero_ratio_gives_empty_list():
    parts = split_examples(list(range(10)), (0.9, 0.1, 0.0))
    assert [len(parts[s]) for s in SPLITS] == [9, 1, 0]
    parts = split_examples([1], (1.0, 0.0, 0.0))
    assert parts == {"train": [1], "validation": [], "test": []}


def test_every_nonzero_split_gets_one_when_possible():
    parts = split_examples(list(range(3)), (0.98, 0.01, 0.01))
    assert [len(parts[s]) for s in SPLITS] == [1, 1, 1]
    parts = split_examples(list(range(12)), (0.8, 0.1, 0.1))
    assert all(parts[s] for s in SPLITS)
    assert sum(len(p) for p in parts.values()) == 12


def test_float_rounding_still_sums_to_total():
    for n in range(3, 200, 7):
        parts = split_examples(list(range(n)), (0.7, 0.2, 0.1))
        assert sum(len(p) for p in parts.values()) == n
    parts = split_examples(list(range(100)), (0.29, 0.71, 0.0))
    assert [len(parts[s]) for s in SPLITS] == [29, 71, 0]


def test_too_few_records():
    with pytest.raises(TunesmithError) as info:
        split_examples([1, 2], (0.8, 0.1, 0.1))
    err = info.value
    assert err.where == "data.split"
    assert "has 2 record(s)" in err.message and "at least 3" in err.message


def test_empty_dataset():
    with pytest.raises(TunesmithError, match="dataset is empty"):
        split_examples([])


@pytest.mark.parametrize(
    "ratios, pattern",
    [
        ((0.8, 0.1, 0.2), "add up to 1"),
        ((0.5, 0.5), "three numbers"),
        ((1.2, -0.1, -0.1), "negative"),
        ((0.8, "0.1", 0.1), "three numbers"),
        ((float("nan"), 0.5, 0.5), "three numbers"),
        (0.8, "three numbers"),
    ],
)
def test_bad_ratios_name_data_split(ratios, pattern):
    with pytest.raises(TunesmithError, match=pattern) as info:
        split_examples(list(range(10)), ratios)
    assert info.value.where == "data.split"
    assert "data.split" in str(info.value)


def test_ratios_within_tolerance_are_accepted():
    parts = split_examples(list(range(10)), (0.8, 0.1, 0.1000005))
    assert sum(len(p) for p in parts.values()) == 10


def test_find_repeats_counts_repeats_of_earlier_content_and_names_the_first():
    def chat(user: str, assistant: str, where: str) -> Example:
        return Example(
            where=where, messages=[{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        )

    examples = [
        chat("hi", "hello", "a:1"),
        chat("hi", "hello", "a:2"),  # same content, different location: a duplicate
        chat("hi", "hello", "a:3"),
        chat("hi", "hey", "a:4"),
        Example(where="a:5", text="hi"),
        Example(where="a:6", text="hi"),
        Example(where="a:7", text="hi "),
    ]
    # The count and the first repeat (with the record it repeats) come from one walk over the content keys.
    assert find_repeats(examples) == Repeats(3, ("a:2", "a:1"))
    assert find_repeats(examples[3:]) == Repeats(1, ("a:6", "a:5"))
    assert find_repeats([]) == Repeats(0, None)
