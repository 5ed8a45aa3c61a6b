"""What classification tasks (text, image) share: the new head's size and names, and label checks."""

from __future__ import annotations

from collections import Counter

from tunesmith.errors import TunesmithError


def head_kwargs(names: list[str]) -> dict:
    """from_pretrained arguments for a classifier with one output per label; the names travel in the config."""
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
        # A checkpoint that already has a head of another size (ImageNet's 1000 classes) gets a new one.
        "ignore_mismatched_sizes": True,
    }


def training_label_names(counts: Counter) -> list[str]:
    names = sorted(counts)
    if len(names) < 2:
        raise TunesmithError(
            f"the training split has {len(names)} class ({', '.join(names) or 'none'}); "
            "a classifier needs at least two",
            where="data.train",
            fix="add records of the other classes",
        )
    return names


def check_labels_seen(splits, known: Counter, labels_of, what: str = "records") -> None:
    """A label of the validation or test split that training never shows cannot be learned: say where."""
    names = ", ".join(sorted(known))
    for split_name, examples in (("validation", splits.validation), ("test", splits.test)):
        for example in examples:
            unseen = [label for label in labels_of(example) if label not in known]
            if unseen:
                raise TunesmithError(
                    f"label {unseen[0]!r} of the {split_name} split never occurs in the training split, so the "
                    f"model cannot learn it (training labels: {names})",
                    where=example.where,
                    fix=f"add training {what} with that label, or remove it from the other splits",
                )
