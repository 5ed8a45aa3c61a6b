"""The model card (README.md) of a pushed run, written from the run's own files: config.yaml for the base
model and method, summary.json for the data sizes and the base-vs-tuned metrics.

Nothing here loads a model or talks to the hub: the card is a pure function of the run folder, so a test
can read it without a network and `push` can write it before the first request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import RunConfig

# Config keys of the method section that say nothing about how the model was tuned.
_METHOD_NOISE = {"name", "fast_dropout"}


def base_model_id(config: RunConfig) -> str:
    """The hub id of the base model where there is one: a packaged starter is a copy of a hub model, and
    the hub links a card's `base_model` to that model's page only when it is a hub id."""
    from tunesmith.models.starters import STARTERS

    starter = STARTERS.get(config.model.name)
    return starter.hub_id if starter else config.model.name


def license_of(config: RunConfig) -> str | None:
    """The base model's licence, when the catalog or the local model folder's own card says it; the card
    omits the field otherwise, since a wrong licence is worse than none."""
    from tunesmith.plan.catalog import load_catalog

    entry = load_catalog().find(base_model_id(config))
    if entry is not None:
        return entry.license
    folder_card = Path(config.model.name) / "README.md"
    if folder_card.is_file():
        meta = _front_matter(folder_card.read_text(encoding="utf-8", errors="replace"))
        value = meta.get("license")
        return value if isinstance(value, str) else None
    return None


def _front_matter(text: str) -> dict[str, Any]:
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def render_card(config: RunConfig, summary: dict[str, Any], repo_id: str, *, merged: bool, saves_adapter: bool) -> str:
    """The README.md: YAML front matter the hub reads, then what was tuned, on what, how well, and how to
    reproduce and load it."""
    base = base_model_id(config)
    adapter = saves_adapter and not merged
    sections = [
        _front(config, base, adapter),
        f"# {repo_id.split('/')[-1]}\n\n"
        f"A {config.task} model tuned with [tunesmith](https://pypi.org/project/tunesmith/) from `{base}` "
        f"with {config.method.name}" + (", merged into the base weights." if merged and saves_adapter else ".") + "\n",
        _method_section(config),
        _data_section(summary),
        _metrics_section(summary),
        _reproduce_section(),
        _load_section(repo_id, adapter, config.task),
    ]
    return "\n".join(s for s in sections if s)


def _front(config: RunConfig, base: str, adapter: bool) -> str:
    meta: dict[str, Any] = {
        "base_model": base,
        "library_name": "peft" if adapter else "transformers",
        "tags": ["tunesmith", config.task, config.method.name],
    }
    licence = license_of(config)
    if licence:
        meta["license"] = licence
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _method_section(config: RunConfig) -> str:
    settings = {k: v for k, v in config.method.model_dump(mode="json").items() if k not in _METHOD_NOISE}
    train = config.train.model_dump(mode="json")
    keep = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "scheduler", "optimizer")
    rows = [f"| method | `{config.method.name}` |"]
    rows += [f"| {k} | `{json.dumps(v)}` |" for k, v in settings.items()]
    rows += [f"| train.{k} | `{json.dumps(train[k])}` |" for k in keep if k in train]
    return (
        "## Base model and method\n\n"
        + f"- base model: `{base_model_id(config)}`\n\n| setting | value |\n|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def _data_section(summary: dict[str, Any]) -> str:
    splits = summary.get("data") or {}
    if not splits:
        return ""
    rows = "\n".join(f"| {name} | {count} |" for name, count in splits.items())
    return f"## Data\n\n| split | records |\n|---|---|\n{rows}\n"


def _metrics_section(summary: dict[str, Any]) -> str:
    base, tuned = summary.get("base") or {}, summary.get("tuned") or {}
    names = [k for k in {**base, **tuned} if k != "test_samples"]
    if not names:
        return "## Metrics\n\nThe run recorded no test-split metrics.\n"
    rows = "\n".join(f"| {n} | {_fmt(base.get(n))} | {_fmt(tuned.get(n))} |" for n in names)
    samples = tuned.get("test_samples") or base.get("test_samples")
    note = f"\n\nOn {samples} held-out test examples.\n" if samples else "\n"
    return f"## Metrics\n\n| metric | base | tuned |\n|---|---|---|\n{rows}{note}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _reproduce_section() -> str:
    return (
        "## Reproduce\n\nThe resolved config of the run is `config.yaml` in this repository (secrets masked):\n\n"
        "```bash\npip install tunesmith\ntunesmith train config.yaml\n```\n"
    )


# The transformers head class each kind of model loads with (the task cards' model_kind, so a new task of
# a known kind needs nothing here); peft's AutoPeftModel<suffix> exists for the same suffixes except
# image classification, where the generic AutoPeftModel reads the class from the adapter.
_AUTO_SUFFIX = {
    "causal-lm": "ForCausalLM",
    "seq2seq": "ForSeq2SeqLM",
    "classifier": "ForSequenceClassification",
    "tagger": "ForTokenClassification",
    "vision": "ForImageClassification",
}


def _load_section(repo_id: str, adapter: bool, task: str) -> str:
    from tunesmith.taskcards import get_card

    kind = get_card(task).model_kind
    suffix = _AUTO_SUFFIX.get(kind)
    if suffix is None:  # a diffusion UNet: no one-line loader to promise
        return ""
    if adapter:
        cls = "AutoPeftModel" + (suffix if kind != "vision" else "")
        code = f'from peft import {cls}\n\nmodel = {cls}.from_pretrained("{repo_id}")\n'
    else:
        cls = "AutoModel" + suffix
        code = f'from transformers import {cls}\n\nmodel = {cls}.from_pretrained("{repo_id}")\n'
    processor = "AutoImageProcessor" if kind == "vision" else "AutoTokenizer"
    code += f'\nfrom transformers import {processor}\n\nprocessor = {processor}.from_pretrained("{repo_id}")\n'
    return f"## Load\n\n```python\n{code}```\n"
