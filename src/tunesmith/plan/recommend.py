"""Rank catalog models for a task on given hardware, choose the method and settings, write a run config.

Each candidate is scored on what decides a fine-tuning project before any GPU time is spent: does it
speak the language, does it know the domain, may you use it, does it fit the hardware and with which
method, how long will an epoch take. Every point of the score comes with a sentence saying why.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import TunesmithError
from tunesmith.methods import by_quality, get_method, methods_for
from tunesmith.plan.catalog import Entry, load_catalog
from tunesmith.plan.estimate import (
    FRAMEWORK_BYTES,
    Estimate,
    UnsupportedModel,
    estimate,
    human_bytes,
    human_count,
    human_duration,
    parameter_memory,
)
from tunesmith.plan.hardware import Hardware, get_hardware
from tunesmith.taskcards import get_card

# Share of device memory a plan may use: the rest absorbs allocator fragmentation and transient peaks.
HEADROOM = 0.9
# A method is chosen only if batch 1 leaves this much free, so a real batch still fits.
METHOD_MARGIN = 0.8
EFFECTIVE_BATCH = 16
# Time basis when neither data nor a token count is given.
ASSUMED_TOKENS = 1_000_000
ASSUMED_IMAGES = 10_000
LICENSE_SCORE = {"permissive": 1.0, "conditional": 0.0, "non-commercial": -2.0, "unknown": -1.0}


@dataclass
class DataStats:
    path: str
    records: int
    p50: int
    p95: int
    max: int
    tokens: list[int]  # per record, characters/4

    def epoch_tokens(self, seq_len: int) -> int:
        return sum(min(t, seq_len) for t in self.tokens)


@dataclass
class Recommendation:
    entry: Entry
    task: str
    hardware: Hardware
    method: str
    lora_r: int | None
    batch: int
    grad_accum: int
    seq_len: int
    grad_checkpointing: bool
    memory_bytes: float
    score: float
    reasons: list[str]
    estimate: Estimate | None = None  # None where the architecture is sized from its parameter count only
    tokens_per_epoch: float | None = None
    hours_per_epoch: float | None = None
    cost_usd: float | None = None
    data_path: str | None = None
    time_basis: str = "epoch"  # "epoch", or "1M tokens" / "10k images" without data
    excluded: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Data lengths


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_chars(v) for v in value)
    return 0


def data_stats(path: str) -> DataStats:
    """Token lengths of a dataset, measured as characters / 4: the usual English BPE ratio (OpenAI's
    rule of thumb), so no tokenizer and no model download is needed. Other scripts tokenise denser."""
    from tunesmith.data.readers import read_records

    records = read_records(path)
    tokens = sorted(max(1, math.ceil(_chars(r.fields) / 4)) for r in records)

    def pct(p: float) -> int:
        return tokens[min(len(tokens) - 1, math.ceil(p * len(tokens)) - 1)]

    return DataStats(str(path), len(tokens), pct(0.5), pct(0.95), tokens[-1], tokens)


def seq_len_for(task: str, context: int, stats: DataStats | None) -> tuple[int, str]:
    """(sequence length, why): the data's p95 rounded up to a power of two, capped by the context."""
    if stats is None:
        wanted = get_card(task).default_seq_len
        why = f"{task} default {wanted} (give --data to size it from your records)"
    else:
        wanted = max(32, 2 ** math.ceil(math.log2(max(stats.p95, 1))))
        why = f"95% of your records are <= {stats.p95} tokens (characters/4), rounded up to {wanted}"
    if wanted > context:
        return context, why + f", capped by the model's context of {context}"
    return wanted, why


# ---------------------------------------------------------------------------------------------------
# Method and batch


def candidate_methods(task: str, only: str | None = None) -> list[str]:
    """The methods `recommend` tries for a task, best quality first: those registered for its model kind
    that it may choose unasked (Recommendable.automatic), or only `only`."""
    names = methods_for(get_card(task).model_kind)
    if only is not None:
        if only not in names:
            raise TunesmithError(
                f"method {only} cannot train task {task}", where="--method", fix=f"choose one of {', '.join(names)}"
            )
        return [only]
    return by_quality([n for n in names if get_method(n).recommend.automatic])


def _plan_memory(
    entry: Entry,
    hw: Hardware,
    seq_len: int,
    r: int,
    methods: list[str],
) -> tuple[str | None, bool, int, Estimate | None, list[Estimate]]:
    """Choose (method, checkpointing, batch, estimate) for an entry the estimator models.

    Order: `methods` (best quality first: full, LoRA, QLoRA), each first without gradient checkpointing; a
    method qualifies when batch 1 uses at most METHOD_MARGIN of the memory. Checkpointing is turned on when
    it is needed to fit, or when it more than doubles a batch smaller than 4.
    """
    tried: list[Estimate] = []
    for method in methods:
        for ckpt in (False, True):
            est = estimate(
                entry, method=method, seq_len=seq_len, batch=1, grad_checkpointing=ckpt, hardware=hw, lora_r=r
            )
            tried.append(est)
            if est.total_bytes > METHOD_MARGIN * hw.memory_bytes:
                continue
            batch = _batch(est, hw)
            if not ckpt and batch < 4:
                other = estimate(
                    entry, method=method, seq_len=seq_len, batch=1, grad_checkpointing=True, hardware=hw, lora_r=r
                )
                if _batch(other, hw) >= 2 * batch:
                    est, ckpt, batch = other, True, _batch(other, hw)
            final = estimate(
                entry, method=method, seq_len=seq_len, batch=batch, grad_checkpointing=ckpt, hardware=hw, lora_r=r
            )
            return method, ckpt, batch, final, tried
    return None, False, 0, None, tried


def _batch(est: Estimate, hw: Hardware) -> int:
    """Largest power of two within HEADROOM of the device, at most the effective batch (so that gradient
    accumulation reaches it exactly); 0 if one example does not fit."""
    per_example = (est.breakdown["activations"] + est.breakdown["logits"]) / est.batch
    fixed = est.total_bytes - per_example * est.batch
    fitting = EFFECTIVE_BATCH if per_example <= 0 else int((HEADROOM * hw.memory_bytes - fixed) // per_example)
    return 0 if fitting < 1 else 2 ** int(math.log2(min(EFFECTIVE_BATCH, fitting)))


def _rough_plan(entry: Entry, hw: Hardware, methods: list[str]) -> tuple[str | None, float]:
    """Architectures without a shape builder: weights, gradients and optimizer from parameter counts only."""
    cfg = entry.config
    loaded, trained = entry.parameters, cfg.get("unet_parameters", entry.parameters)
    if cfg.get("base_model"):  # an adapter: its base model is loaded too, frozen
        base = load_catalog().find(cfg["base_model"])
        loaded += base.parameters if base else 0
    for method in methods:
        if get_method(
            method
        ).footprint.trains_base:  # the trained part with its gradients and states; frozen parts as plain weights
            memory = parameter_memory(trained, trained, method, hw)
            memory["weights"] += (loaded - trained) * (2 if hw.is_gpu and hw.bf16 else 4)
        else:  # adapters on an unmodelled architecture: ~1% of the trained part, a typical LoRA size
            memory = parameter_memory(loaded, max(1, trained // 100), method, hw)
        total = sum(memory.values()) + FRAMEWORK_BYTES["gpu" if hw.is_gpu else "other"]
        # Activations are not modelled: keep a quarter of the memory free for them.
        if total <= 0.75 * hw.memory_bytes:
            return method, total
    return None, total


# ---------------------------------------------------------------------------------------------------
# Where the weights come from


def _offline_model(task: str) -> str | None:
    """The installed packaged starter that the task's `init` template trains, if any: what works with no
    network (taskcards.py init_settings)."""
    from tunesmith.models.starters import find_starter

    starter = find_starter(str(get_card(task).init_settings.get("model.name", "")))
    return starter.name if starter is not None and importlib.util.find_spec(starter.package) else None


def availability(entry: Entry, task: str, online: bool) -> str:
    """A reason line saying what the recommended model needs before `tunesmith train` can load it: nothing
    (an installed packaged starter), a package, or the hub; and, where the hub cannot be reached from here
    (`online` False), what to use instead."""
    from tunesmith.models.starters import find_starter

    starter = find_starter(entry.id)
    if starter is not None:
        if importlib.util.find_spec(starter.package):
            return f"weights: the packaged starter {starter.name}, installed: works offline"
        return f"weights: the packaged starter {starter.name}: install it with `{starter.pip_install}` (works offline)"
    other = _offline_model(task)
    if online:
        return f"weights: needs the hub: {entry.id} is downloaded on first use" + (
            f"; offline, use the packaged starter {other} (model.name: {other})" if other else ""
        )
    return (
        f"weights: needs the hub, which is unreachable from here (HF_HUB_OFFLINE=1 or no network), so {entry.id} "
        "cannot be downloaded: "
        + (f"set model.name: {other} (the packaged starter, works offline), or " if other else "")
        + f"run `huggingface-cli download {entry.id} --local-dir models/x` on a machine with network, copy the "
        "folder here and set model.name: models/x"
    )


# ---------------------------------------------------------------------------------------------------
# Ranking


def _language_score(entry: Entry, language: str, task: str) -> tuple[float, str | None]:
    card = get_card(task)
    if card.images and card.model_kind != "diffusion":  # no text goes in
        return 0.0, None
    lang = language.lower()
    if lang in entry.languages:
        many = (
            f" (one of {entry.language_count} languages)"
            if entry.language_count
            else (f" (one of {len(entry.languages)})" if len(entry.languages) > 1 else "")
        )
        return 2.0, f"language: trained on '{lang}'{many}"
    if entry.language_count and entry.language_count > len(entry.languages):
        return 0.5, (
            f"language: '{lang}' is not among its main languages, but it covers {entry.language_count}; "
            "check the model card"
        )
    return -4.0, (
        f"language: trained on {', '.join(entry.languages) or 'no text'} only, not '{lang}'; expect poor "
        "results without continued pre-training"
    )


def _domain_score(entry: Entry, domain: str | None) -> tuple[float, str | None]:
    if domain is None:
        if entry.domain == "general":
            return 0.0, None
        return -0.5, f"domain: specialised in {entry.domain}; prefer it only for {entry.domain} data"
    if entry.domain.lower() == domain.lower():
        return 3.0, f"domain: pre-trained or tuned on {entry.domain} text ({entry.pretraining_data})"
    if entry.domain == "general":
        return 0.0, f"domain: general-purpose; fine-tuning on your {domain} data specialises it"
    return -1.0, f"domain: specialised in {entry.domain}, not {domain}"


def _size_score(parameters: int) -> float:
    # Larger models fine-tune to better quality, with diminishing returns: +1.2 per 10x above 100M, up to 3.
    return min(3.0, max(0.0, 1.2 * math.log10(parameters / 1e8)))


def _time_penalty(hours: float | None) -> float:
    # Free up to an hour, then 1.5 per doubling: a model 100x slower than needed should lose.
    return 0.0 if not hours or hours <= 1 else 1.5 * math.log2(hours)


def _candidate(
    entry: Entry,
    task: str,
    hw: Hardware,
    language: str,
    domain: str | None,
    stats: DataStats | None,
    tokens: int | None,
    price: float | None,
    budget_hours: float | None,
    max_cost_usd: float | None,
    methods: list[str],
) -> Recommendation | str:
    """The recommendation, or why the entry is left out."""
    catalog = load_catalog()
    reasons: list[str] = []
    score = 0.0
    image = get_card(task).images
    seq_len, seq_why = (
        (entry.context_length, f"{entry.context_length} px images")
        if image
        else seq_len_for(task, entry.context_length, stats)
    )
    r = get_card(task).lora_rank

    # 1. Method by memory
    try:
        method, ckpt, batch, est, tried = _plan_memory(entry, hw, seq_len, r, methods)
        rough = False
        memory = est.total_bytes if est else min(t.total_bytes for t in tried)
    except UnsupportedModel:
        est, ckpt, batch, rough = None, False, 1, True
        method, memory = _rough_plan(entry, hw, methods)
    if method is None:
        return f"{entry.name}: does not fit {hw.name} even with {methods[-1]} ({human_bytes(memory)} at batch 1)"

    full_need = (
        None if rough else next((t.total_bytes for t in tried if get_method(t.method).footprint.trains_base), None)
    )
    size = f"size: {human_count(entry.parameters)} parameters"
    if get_method(method).footprint.trains_base:
        reasons.append(
            f"{size}; full fine-tuning needs {human_bytes(memory)} of {human_bytes(hw.memory_bytes)} on {hw.name}"
        )
    else:
        reasons.append(
            f"{size}; full fine-tuning would need {human_bytes(full_need) if full_need else 'more than fits'}, "
            f"{method} needs {human_bytes(memory)} of {human_bytes(hw.memory_bytes)} on {hw.name}"
        )
    reasons.append(f"method: {method}: {get_method(method).recommend.trade_off}")
    score += get_method(method).recommend.quality + _size_score(entry.parameters)
    if rough:
        score -= 0.5
        reasons.append(
            f"memory: {entry.config['model_type']} is sized from parameter counts only (activations not "
            "modelled; a quarter of the memory is left for them), batch 1"
        )
    else:
        accum = math.ceil(EFFECTIVE_BATCH / batch)
        reasons.append(
            f"batch: {batch} per step{' with gradient checkpointing' if ckpt else ''} fits, x{accum} "
            f"accumulation = effective {batch * accum}"
        )
    if not image:
        reasons.append(f"sequence length: {seq_len}: {seq_why}")
    ranked = "r" in get_method(method).Config.model_fields
    if ranked:
        reasons.append(
            f"LoRA rank {r} on all linear layers: adapting every layer matters more than the rank "
            f"(QLoRA paper); {'generation tasks get 16' if r == 16 else 'classification needs little capacity, 8'}"
        )

    # 2. Fit to the use case
    for part in (_language_score(entry, language, task), _domain_score(entry, domain)):
        score += part[0]
        if part[1]:
            reasons.append(part[1])
    lic = catalog.license_of(entry)
    score += LICENSE_SCORE[lic.kind]
    reasons.append(f"licence: {entry.license} ({lic.kind}): {lic.note}")
    score += 0.5 if entry.fine_tuning_docs else 0.0
    reasons.append("fine-tuning guide: published" if entry.fine_tuning_docs else "fine-tuning guide: none official")
    if entry.source == "community":
        score -= 0.25
        reasons.append("source: community release, not the original authors'")

    # 3. Time and cost
    epoch_tokens = hours = cost = None
    basis = "epoch"
    if est is not None and not image:
        if stats is not None:
            epoch_tokens = stats.epoch_tokens(seq_len)
        elif tokens:
            epoch_tokens = tokens
        else:
            epoch_tokens, basis = ASSUMED_TOKENS, "1M tokens"
        hours = est.seconds_for_tokens(epoch_tokens) / 3600
    elif est is not None:
        images = stats.records if stats is not None else (tokens or ASSUMED_IMAGES)
        basis = "epoch" if (stats is not None or tokens) else "10k images"
        hours = images / est.examples_per_second / 3600
    if hours is not None and est is not None:  # hours are only known from an estimate
        hourly = price if price is not None else hw.price_per_hour
        cost = hours * hourly if hourly is not None else None
        score -= _time_penalty(hours)
        reasons.append(
            f"time: {human_duration(hours * 3600)} per {basis} at ~{human_count(est.tokens_per_second or est.examples_per_second)}"
            f" {'tokens' if est.tokens_per_second else 'examples'}/s" + (f", ${cost:.2f}" if cost is not None else "")
        )
        if budget_hours is not None and basis == "epoch" and hours > budget_hours:
            return f"{entry.name}: {human_duration(hours * 3600)} per epoch exceeds the {budget_hours:g} h budget"
        if max_cost_usd is not None and basis == "epoch" and cost is not None and cost > max_cost_usd:
            return f"{entry.name}: ${cost:.2f} per epoch exceeds the ${max_cost_usd:g} limit"

    return Recommendation(
        entry=entry,
        task=task,
        hardware=hw,
        method=method,
        lora_r=r if ranked else None,
        batch=batch,
        grad_accum=math.ceil(EFFECTIVE_BATCH / max(batch, 1)),
        seq_len=seq_len,
        grad_checkpointing=ckpt,
        memory_bytes=memory,
        score=round(score, 2),
        reasons=reasons,
        estimate=est,
        tokens_per_epoch=epoch_tokens,
        hours_per_epoch=hours,
        cost_usd=cost,
        data_path=stats.path if stats else None,
        time_basis=basis,
    )


def recommend(
    task: str,
    language: str = "en",
    domain: str | None = None,
    hardware: str | Hardware = "auto",
    data_path: str | None = None,
    budget_hours: float | None = None,
    max_cost_usd: float | None = None,
    top: int = 5,
    tokens: int | None = None,
    price_per_hour: float | None = None,
    method: str | None = None,
) -> list[Recommendation]:
    """The `top` catalog models for `task`, best first, each with its method, settings, time, cost and reasons.

    `data_path` sizes the sequence length and the epoch; without it `tokens` (training tokens, or images
    for image tasks, per epoch) does, else times are per 1M tokens or 10k images and the budget and cost limits are not applied. Models that do not
    fit, or exceed the budget, are left out; the first recommendation's `excluded` lists them. `method`
    restricts the choice to one registered method.
    """
    if top < 1:
        raise TunesmithError(f"top must be at least 1, got {top}", where="--top")
    methods = candidate_methods(task, method)
    catalog = load_catalog()
    entries = catalog.for_task(task)
    hw = get_hardware(hardware)
    stats = data_stats(data_path) if data_path else None
    chosen: list[Recommendation] = []
    excluded: list[str] = []
    for entry in entries:
        rec = _candidate(
            entry, task, hw, language, domain, stats, tokens, price_per_hour, budget_hours, max_cost_usd, methods
        )
        if isinstance(rec, str):
            excluded.append(rec)
        else:
            chosen.append(rec)
    if not chosen:
        raise TunesmithError(
            f"no {task} model in the catalog fits these limits: " + "; ".join(excluded),
            where="--hardware" if budget_hours is None and max_cost_usd is None else "--budget/--max-cost",
            fix="use hardware with more memory (e.g. --hardware A100-80GB), more GPUs, or a larger budget",
        )
    chosen.sort(key=lambda rec: (-rec.score, rec.entry.parameters))
    chosen = chosen[:top]
    chosen[0].excluded = excluded
    _add_availability(chosen, task)
    return chosen


def _add_availability(recs: list[Recommendation], task: str) -> None:
    """Each recommendation says where its weights come from. The hub is probed once, and only when a
    recommended model is not packaged (a probe of an unreachable host takes up to seconds)."""
    from tunesmith.models.resolve import hub_reachable
    from tunesmith.models.starters import find_starter

    online = all(find_starter(rec.entry.id) for rec in recs) or hub_reachable()
    for rec in recs:
        rec.reasons.append(availability(rec.entry, task, online))


# ---------------------------------------------------------------------------------------------------
# Run config


def example_data_for(task: str) -> str | None:
    """The packaged example data that the task's `init` template trains on (taskcards.py), so that a
    config written without --data passes the data checks as written."""
    value = get_card(task).init_settings.get("data.train")
    return str(value) if value else None


def run_config(rec: Recommendation, data_path: str | None = None) -> dict[str, Any]:
    """The recommendation as a RunConfig-shaped dict (sections model/data/method/train/eval/output)."""
    from tunesmith.models.starters import find_starter

    starter = find_starter(rec.entry.id)
    model = {"name": starter.name if starter else rec.entry.id}
    if rec.entry.config.get("model_type") == "gemma2":
        model["attn_implementation"] = "eager"  # Gemma 2's logit soft-capping needs eager attention
    method: dict[str, Any] = {"name": rec.method}
    if rec.lora_r is not None:
        method.update(r=rec.lora_r, alpha=2 * rec.lora_r, target_modules="all-linear")
    data: dict[str, Any] = {"train": data_path or rec.data_path or example_data_for(rec.task)}
    if not get_card(rec.task).images:
        data["max_length"] = rec.seq_len
    return {
        "name": f"{rec.entry.name}-{rec.method}",
        "task": rec.task,
        "model": model,
        "data": data,
        "method": method,
        "train": {
            "epochs": 1,
            "batch_size": rec.batch,
            "grad_accum": rec.grad_accum,
            "learning_rate": get_method(rec.method).recommend.learning_rate,
            "gradient_checkpointing": rec.grad_checkpointing,
        },
        "output": {"dir": "runs"},
    }


def write_config(rec: Recommendation, path: str | Path, data_path: str | None = None, overwrite: bool = False) -> Path:
    """Write a ready run YAML for `tunesmith train`, with the reasons as comments. Refuses to overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TunesmithError(f"{path} exists", where="--write", fix="choose another file name or delete it first")
    header = [
        f"# tunesmith run config written by `tunesmith recommend` for {rec.entry.id} on {rec.hardware.name}",
        *(f"#   {reason}" for reason in rec.reasons),
    ]
    if not (data_path or rec.data_path):
        header.append(
            f"# data.train points at the packaged example data for {rec.task}, so the data checks pass as written: set it "
            "to your training file before `tunesmith train` (recommend --data sizes the plan from it)"
            if example_data_for(rec.task)
            else "# set data.train to your training file before `tunesmith train`"
        )
    data = data_path or rec.data_path
    # A relative data path keeps working when the YAML sits in the working directory; else make it absolute.
    if data and not Path(data).is_absolute() and path.resolve().parent != Path.cwd() and Path(data).exists():
        data = str(Path(data).resolve())
    body = yaml.safe_dump(run_config(rec, data), sort_keys=False)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
    return path
