"""Where data and models come from: a local path or a hub id, decided once.

`data.train: someorg/tickets` may be a folder beside the config or a dataset on the Hugging Face hub, and
`model.name: models/x` a folder or a hub repo. config.py decides it when a config is loaded, against the
folder the value was written relative to (the config file's, or the working directory for --set): a local
path becomes absolute, a hub id stays as written. data/readers.py then reads a relative value that exists
nowhere as a hub id, without deciding again against the working directory (issue 15: a config read the
same data wherever it was run from, except when the working directory held a folder of the hub id's owner).

It sits below config (which resolves its paths with it) and imports nothing of tunesmith, so data and
models can use it too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DATA_SUFFIXES", "hub_shaped", "resolve_data_path", "resolve_model_name"]

# The files data/readers.py reads. Given where the run config goes, such a file is data: `tunesmith validate
# tickets.jsonl` is a newcomer's natural first try (config.py says so).
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
# `owner/name`, as the hub spells dataset and model ids; anything with more path parts is a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_shaped(value: str) -> bool:
    """`owner/name` without a data file's suffix: a hub dataset id unless a local path of that name exists."""
    return _HUB_ID.match(value) is not None and Path(value).suffix.lower() not in DATA_SUFFIXES


def _expanded(value: str) -> Path:
    try:
        return Path(value).expanduser()
    except RuntimeError:  # `~someone/...` for a user this machine does not have: a plain relative path
        return Path(value)


def resolve_data_path(value: str, base: Path, *, may_be_hub_id: bool = True) -> str:
    """`value` made absolute against `base`, whether it exists or not (a missing file's message then says
    where it was looked for); a hub dataset id stays as written."""
    path = _expanded(value)
    if path.is_absolute():
        return str(path)
    resolved = Path(os.path.normpath(base / path))
    hub_id = (
        may_be_hub_id
        and hub_shaped(value)
        and not resolved.exists()
        and not (base / path.parts[0]).is_dir()  # `data/trian` beside a data/ folder is a mistyped path
    )
    return value if hub_id else str(resolved)


def resolve_model_name(value: str, base: Path) -> str:
    """A model reference made absolute against `base` when it names a path there (a model folder, a .gguf
    file) or can only be a path (`./x`, `a/b/c`, `x.gguf`); a hub id (`org/name`) or a starter name that
    `base` holds nothing of stays as written, for models/resolve.py to find."""
    path = _expanded(value)
    if path.is_absolute():
        return str(path)
    resolved = Path(os.path.normpath(base / path))
    only_a_path = (
        value.startswith(".")
        or path.suffix.lower() == ".gguf"
        or ("/" in value and _HUB_ID.match(value) is None)  # more parts than a hub id has
    )
    return str(resolved) if resolved.exists() or only_a_path else value
