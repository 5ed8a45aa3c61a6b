"""Model references -> something `from_pretrained` can load.

A reference is a packaged starter name, a local directory, a `.gguf` file, or a hub id. A hub id that
names a starter resolves to the packaged copy when the hub cannot be reached; any other unreachable
hub id fails with the way to use a local directory instead.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tunesmith.errors import TunesmithError
from tunesmith.models.starters import STARTERS, find_starter, starter_directory


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # directory or hub id given to from_pretrained
    gguf_file: str | None
    source: str  # "starter", "local", "gguf" or "hub"
    reference: str  # what the user wrote


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub instead of huggingface_hub's ~25 s of retries when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(reference: str, gguf_file: str | None = None) -> ResolvedModel:
    path = Path(reference).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(str(path.parent), path.name, "gguf", reference)
    if path.is_file():
        from tunesmith.models.safe_load import PICKLE_SUFFIXES

        pickled = path.suffix.lower() in PICKLE_SUFFIXES
        raise TunesmithError(
            f"{reference} is "
            + ("a pickle checkpoint (it can run code when loaded)" if pickled else "a file")
            + ", not a model folder",
            where="model.name",
            fix="point model.name at the model's folder (config.json + model.safetensors), a .gguf file, a hub id or a "
            "starter"
            + ("; convert the checkpoint once with save_pretrained(dir, safe_serialization=True)" if pickled else ""),
        )
    if path.is_dir():
        # A diffusers pipeline folder (text-to-image) has model_index.json and one config per component.
        if gguf_file is None and not (path / "config.json").exists() and not (path / "model_index.json").exists():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                gguf_file = ggufs[0]
            else:
                raise TunesmithError(
                    f"{path} has no config.json" + (f" and several GGUF files: {', '.join(ggufs)}" if ggufs else ""),
                    where="model.name",
                    fix="point model.name at a Hugging Face model directory, or set model.gguf_file",
                )
        return ResolvedModel(str(path), gguf_file, "gguf" if gguf_file else "local", reference)

    starter = find_starter(reference)
    if starter is not None and (reference.lower() == starter.name or not hub_reachable()):
        return ResolvedModel(str(starter_directory(starter)), None, "starter", reference)

    if "/" not in reference or reference.startswith((".", "/", "~")):
        raise TunesmithError(
            f"model {reference!r} is not a local path, a starter model or a hub id",
            where="model.name",
            fix=f"use a directory, a .gguf file, org/name from the hub, or a starter: {', '.join(STARTERS)}",
        )
    if not hub_reachable():
        raise TunesmithError(
            f"the model hub is unreachable, so {reference!r} cannot be downloaded",
            where="model.name",
            fix=(
                f"on a machine with network run `huggingface-cli download {reference} --local-dir models/x`, copy "
                f"the folder here and set model.name: models/x; starters that work offline: {', '.join(STARTERS)}"
            ),
        )
    return ResolvedModel(reference, gguf_file, "hub", reference)
