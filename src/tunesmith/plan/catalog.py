"""The model catalog (`catalog.yaml`) as typed entries, and model references -> config dicts.

The catalog is data: what each model is, what it is for, under which licence, and the config.json
fields the estimator needs, so planning works offline. `model_config` turns any reference the rest of
tunesmith accepts (catalog name or hub id, local directory, config.json file, starter) into such a
config without loading weights.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import TunesmithError

if TYPE_CHECKING:
    from tunesmith.models.starters import StarterModel

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")


class License(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["permissive", "conditional", "non-commercial", "unknown"]
    note: str


class Entry(BaseModel):
    """One catalog model. Field meanings are documented at the top of catalog.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    id: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    tasks: list[str] = Field(min_length=1)
    architecture: str
    parameters: int = Field(gt=0)
    context_length: int = Field(gt=0)
    languages: list[str]
    language_count: int | None = None
    domain: str
    license: str
    pretraining_data: str
    source: Literal["official", "community"]
    fine_tuning_docs: bool
    notes: str
    metrics: list[str] = Field(min_length=1)
    config: dict[str, Any]

    @model_validator(mode="after")
    def _config_has_type(self) -> Entry:
        if "model_type" not in self.config:
            raise ValueError(f"{self.id}: config needs model_type")
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: dict[str, str]
    licenses: dict[str, License]
    models: list[Entry] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        seen: set[str] = set()
        for entry in self.models:
            for key in (entry.id.lower(), entry.name):
                if key in seen:
                    raise ValueError(f"duplicate catalog id or name {key!r}")
                seen.add(key)
            unknown = [t for t in entry.tasks if t not in self.tasks]
            if unknown:
                raise ValueError(f"{entry.id}: unknown task(s) {unknown}; known: {list(self.tasks)}")
            if entry.license not in self.licenses:
                raise ValueError(f"{entry.id}: licence {entry.license!r} is not in the licenses table")
        return self

    def license_of(self, entry: Entry) -> License:
        return self.licenses[entry.license]

    def for_task(self, task: str) -> list[Entry]:
        if task not in self.tasks:
            raise TunesmithError(
                f"unknown task {task!r}" + _closest(task, list(self.tasks)),
                where="--task",
                fix=f"use one of: {', '.join(self.tasks)}",
            )
        return [e for e in self.models if task in e.tasks]

    def find(self, reference: str) -> Entry | None:
        key = reference.strip().lower()
        for entry in self.models:
            if key in (entry.id.lower(), entry.name):
                return entry
        return None

    def get(self, reference: str) -> Entry:
        """An entry by hub id or short name (case-insensitive); unknown names list the closest ones."""
        entry = self.find(reference)
        if entry is None:
            raise TunesmithError(
                f"{reference!r} is not in the model catalog" + _closest(reference, self.names()),
                fix="see `tunesmith recommend --task ...` for catalog models, or give a local model directory or config.json",
            )
        return entry

    def names(self) -> list[str]:
        return [n for e in self.models for n in (e.name, e.id)]


def _closest(word: str, choices: list[str]) -> str:
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.strip().lower(), list(lowered), n=3, cutoff=0.4)
    return f"; closest: {', '.join(lowered[c] for c in close)}" if close else ""


@lru_cache(maxsize=4)
def load_catalog(path: str | Path = CATALOG_PATH) -> Catalog:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return Catalog.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise TunesmithError(f"cannot read the model catalog: {exc}", where=str(path)) from None
    except ValidationError as exc:
        raise TunesmithError(f"invalid model catalog: {exc}", where=str(path)) from None


# ---------------------------------------------------------------------------------------------------
# Model reference -> config dict


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TunesmithError(
            f"cannot read model config: {exc}", where=str(path), fix="point at a valid config.json"
        ) from None
    if not isinstance(data, dict):
        raise TunesmithError("config.json must hold a JSON object", where=str(path))
    return data


def _hub_config(reference: str, tried: list[str]) -> dict[str, Any]:
    """config.json of a hub model, downloaded alone (no weights). Fails fast when the hub is unreachable."""
    from tunesmith.models.resolve import hub_reachable

    if not hub_reachable():
        tried.append("the hub (unreachable from here, or HF_HUB_OFFLINE=1)")
        raise TunesmithError(
            f"cannot read the config of {reference!r}: tried " + "; ".join(tried),
            where="model",
            fix=(
                f"on a machine with network run `huggingface-cli download {reference} config.json --local-dir x`, "
                "then pass the folder or x/config.json; or use a catalog model"
            ),
        )
    try:
        from huggingface_hub import hf_hub_download

        return _read_json(Path(hf_hub_download(reference, "config.json")))
    except TunesmithError:
        raise
    except Exception as exc:  # huggingface_hub raises many types (404, gated repo, network)
        tried.append(f"the hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        raise TunesmithError(
            f"cannot read the config of {reference!r}: tried " + "; ".join(tried),
            where="model",
            fix="check the hub id (and `huggingface-cli login` for gated models), or pass a local config.json",
        ) from None


def _starter_config(starter: StarterModel) -> Path | None:
    """config.json of a starter without converting it: the packaged folder, or the converted cache."""
    import importlib.util

    from tunesmith.models.starters import cache_root

    spec = importlib.util.find_spec(starter.package)
    folders = [Path(p) / starter.relative_path for p in (spec.submodule_search_locations or [])] if spec else []
    folders.append(cache_root() / "models" / starter.name)
    return next((f / "config.json" for f in folders if (f / "config.json").is_file()), None)


def model_config(reference: str | dict[str, Any] | Entry) -> tuple[str, dict[str, Any], Entry | None]:
    """(display name, config dict, catalog entry or None) for a reference, without loading weights.

    Tried in order: a config dict or catalog entry as given; a config.json file; a model directory;
    a catalog id or short name; a packaged starter; a hub id (config.json alone, when the hub is reachable).
    """
    if isinstance(reference, Entry):
        return reference.name, dict(reference.config), reference
    if isinstance(reference, dict):
        return str(reference.get("_name_or_path") or reference.get("model_type", "config")), dict(reference), None
    path = Path(reference).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            raise TunesmithError(
                "a .gguf file holds no config.json the planner can read",
                where=str(path),
                fix="pass the matching catalog name or the hub model's config.json",
            )
        return path.parent.name if path.name == "config.json" else path.name, _read_json(path), None
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TunesmithError(
                f"{path} has no config.json",
                where=str(path),
                fix="point at a Hugging Face model folder, or name the catalog model it copies",
            )
        return path.name, _read_json(path / "config.json"), None

    catalog = load_catalog()
    entry = catalog.find(reference)
    if entry is not None:
        return entry.name, dict(entry.config), entry
    tried = ["the catalog" + (_closest(reference, catalog.names()) or " (no close names)"), "local paths"]

    from tunesmith.models.starters import find_starter

    starter = find_starter(reference)
    if starter is not None:
        found = _starter_config(starter)
        if found is not None:
            return starter.name, _read_json(found), None
        tried.append(f"the starter {starter.name!r} (not installed, or its GGUF not converted yet)")

    if "/" not in reference or reference.startswith((".", "/", "~")):
        raise TunesmithError(
            f"unknown model {reference!r}: tried " + "; ".join(tried),
            where="model",
            fix="use a catalog name (see `tunesmith recommend`), a model folder, a config.json file, or a hub id org/name",
        )
    return reference, _hub_config(reference, tried), None
