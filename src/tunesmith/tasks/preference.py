"""Preference tuning of a causal LM on pairs of answers: DPO, IPO, hinge (SLiC), SimPO and ORPO.

A pair (data/preference.py) is encoded twice, the prompt with the chosen answer and with the rejected one,
with the loss mask on the answer only; a batch of B pairs is one forward over 2B rows (chosen rows first).
The loss (train/preference_loss.py) compares the answers' log-probabilities under the model, and for the
DPO family under a reference model (`train.reference`):

  adapter  the same model with its adapter switched off (LoRA and the other adapter methods): no second copy
  copy     a frozen copy of the model as it was before training (full fine-tuning, freeze)
  cached   the reference's log-probabilities computed once, before training, for every training and
           validation pair: no second model in memory and no reference pass per step
  auto     adapter where the method trains an adapter over an unchanged base, else copy

The loop sums each pair's loss and divides by the pairs of the step (`count_targets`), as it divides token
losses by tokens. Rewards, margins and reward accuracy go to metrics.jsonl with the loss (`step_metrics`).
On the test split: preference accuracy (the model gives the chosen answer the higher log-probability) base
vs tuned, the rewards against the reference, and answers generated for the report's samples.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import dataclass, field

import torch

from tunesmith.data.chat_template import (
    IGNORE_INDEX,
    encode_chat,
    render,
    show_mask,
    stop_token_ids,
    template_for,
)
from tunesmith.data.formats import Example
from tunesmith.data.preference import PreferenceExample, normalise_pairs
from tunesmith.errors import TunesmithError
from tunesmith.models.unwrap import innermost_model
from tunesmith.tasks import chat
from tunesmith.train.loss import sequence_logps
from tunesmith.train.preference_loss import NEEDS_REFERENCE, AnswerLogps, pair_losses

peft_task_type = "CAUSAL_LM"
target_unit = "pairs"  # what count_targets counts: the loss is a mean over pairs
stratify_key = None
packing_note = "; preference pairs are batched as pairs (chosen and rejected rows), never packed"

# What `predict` and the playground read: conversations to answer, as for chat.
normalise_prompts = chat.normalise_prompts
predict = chat.predict
load_processor = chat.load_processor
model_class = chat.model_class


@dataclass
class EncodedPair:
    where: str
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    truncated: bool = False  # either answer was cut by data.max_length
    full_length: int = 0  # the longer of the two before the cut (the planner's and pre-flight's length)
    ref_chosen: float | None = None  # train.reference: cached
    ref_rejected: float | None = None

    @property
    def input_ids(self) -> list[int]:
        """The longer row: what group_by_length sorts by and the batch-size probe pads to."""
        return self.chosen_ids if len(self.chosen_ids) >= len(self.rejected_ids) else self.rejected_ids

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.chosen_labels + self.rejected_labels)


def normalise(records: list, data_cfg) -> tuple[list[PreferenceExample], str]:
    return normalise_pairs(records, data_cfg)


def to_record(example: PreferenceExample) -> dict:
    return example.record()


def setup(splits, config) -> dict:
    return {}


def model_kwargs(meta: dict) -> dict:
    return {}


def baseline(splits, config, meta: dict) -> dict | None:
    return None  # the base model is the baseline: its preference accuracy is scored before training


def plots(rows: list[dict], meta: dict, folder) -> list[str]:
    return []


# ---------------------------------------------------------------------------------------------------
# Encoding


def _prompt_ids(example: PreferenceExample, tokenizer, config) -> list[int]:
    """The prompt's tokens, once per pair: as plain text, or rendered with the generation prompt (where the
    answer starts)."""
    if isinstance(example.prompt, str):
        return tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
    template = template_for(tokenizer, config.data.chat_template)
    text = render(tokenizer, example.prompt, template, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _encode_answer(
    example: PreferenceExample, answer: str, prompt_ids: list[int], tokenizer, config, stop_ids
) -> tuple[list, list, bool, int]:
    """(ids, labels, truncated, full length) of the prompt followed by `answer`, loss on the answer alone."""
    max_length = config.data.max_length
    if isinstance(example.prompt, str):  # the implicit text layout: plain text, no chat template
        # Prompt and answer tokenised apart, as TRL does: both answers then start at the same token, where a
        # joint tokenisation could merge the boundary differently for each.
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        answer_ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = prompt_ids + answer_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        full = len(ids)
        ids, labels = ids[:max_length], labels[:max_length]
    else:
        encoded = encode_chat(
            Example(example.where, example.prompt + [{"role": "assistant", "content": answer}]),
            tokenizer,
            max_length=max_length,
            template=config.data.chat_template,
            stop_ids=stop_ids,
        )
        ids, full = encoded.input_ids, encoded.full_length
        # Loss only after the prompt as rendered for generation: earlier assistant turns in the prompt are context.
        start = len(prompt_ids)
        if ids[: min(start, len(ids))] != prompt_ids[: len(ids)]:
            # A template whose conversation does not start with its generation prompt: the answer is the
            # labelled span after the prompt's own assistant turns.
            earlier = sum(m["role"] == "assistant" for m in example.prompt)
            spans = encoded.assistant_spans
            start = spans[earlier][0] if len(spans) > earlier else len(ids)
        labels = [IGNORE_INDEX] * min(start, len(ids)) + list(encoded.labels[start:])
    if not any(label != IGNORE_INDEX for label in labels):
        raise TunesmithError(
            f"this pair's prompt fills data.max_length={max_length}: {full} tokens with the answer, none of the "
            "answer left to compare",
            where=example.where,
            fix=f"raise data.max_length to at least {full}, or shorten this record's prompt",
        )
    return ids, labels, full > max_length, full


def encode(examples: list[PreferenceExample], tokenizer, config, meta: dict | None = None) -> list[EncodedPair]:
    stop_ids = stop_token_ids(tokenizer)
    out = []
    for example in examples:
        prompt_ids = _prompt_ids(example, tokenizer, config)
        c_ids, c_labels, c_cut, c_full = _encode_answer(
            example, example.chosen, prompt_ids, tokenizer, config, stop_ids
        )
        r_ids, r_labels, r_cut, r_full = _encode_answer(
            example, example.rejected, prompt_ids, tokenizer, config, stop_ids
        )
        out.append(EncodedPair(example.where, c_ids, c_labels, r_ids, r_labels, c_cut or r_cut, max(c_full, r_full)))
    return out


def describe(encoded: EncodedPair, tokenizer) -> str:
    """One pair as the model sees it, for `tunesmith validate`: [[...]] carries the loss."""
    from tunesmith.data.chat_template import EncodedExample, _token_spans

    def shown(ids, labels) -> str:
        example = EncodedExample(ids, labels, encoded.where)
        example.assistant_spans = _token_spans(labels)
        return show_mask(example, tokenizer)

    return (
        "first training record as the model sees it, a pair ([[...]] is the answer the loss compares):\n\nchosen:\n"
        + shown(encoded.chosen_ids, encoded.chosen_labels)
        + "\n\nrejected:\n"
        + shown(encoded.rejected_ids, encoded.rejected_labels)
    )


def findings(encoded: list[EncodedPair], config) -> list[str]:
    """What `tunesmith validate` warns about beyond the counts: pairs whose answers data.max_length cuts."""
    cut = [e for e in encoded if e.truncated]
    if not cut:
        return []
    longest = max(e.full_length for e in cut)
    return [
        f"{len(cut)} pair(s) have an answer cut by data.max_length={config.data.max_length} (the first: {cut[0].where}); "
        f"a cut answer is compared by its first tokens only. Fix: raise data.max_length to {longest}"
    ]


def collate(batch: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """2B right-padded rows, the chosen answers' first; cached reference log-probabilities ride along."""
    rows = [(e.chosen_ids, e.chosen_labels) for e in batch] + [(e.rejected_ids, e.rejected_labels) for e in batch]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    if all(e.ref_chosen is not None and e.ref_rejected is not None for e in batch):
        out["ref_logps"] = torch.tensor(
            [e.ref_chosen for e in batch] + [e.ref_rejected for e in batch], dtype=torch.float32
        )
    return out


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    return batch["input_ids"].shape[0] // 2


# ---------------------------------------------------------------------------------------------------
# The reference model


@dataclass
class _Reference:
    mode: str  # adapter, copy, cached, none
    model: torch.nn.Module | None = None  # the frozen copy


# The trained model (innermost, so accelerate's and PEFT's wrappers do not hide it) -> its reference. Weak: a
# finished run's model and its copy are freed together.
_REFERENCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reference_mode(config) -> str:
    """train.reference resolved: none for losses without a reference (SimPO, ORPO)."""
    if not NEEDS_REFERENCE[config.train.loss_type]:
        return "none"
    mode = config.train.reference
    adapter_is_base = _adapter_is_base(config)
    if mode == "auto":
        return "adapter" if adapter_is_base else "copy"
    if mode == "adapter" and not adapter_is_base:
        raise TunesmithError(
            f"train.reference: adapter needs an adapter over the unchanged base; method {config.method.name} "
            "trains the base weights (or rewrites them), so switching it off is not the reference",
            where="train.reference",
            fix="use train.reference: copy (a frozen copy) or cached (log-probabilities computed once)",
        )
    return mode


def _adapter_is_base(config) -> bool:
    """The method trains an adapter over the unchanged base, so the model with it switched off is the base
    (PiSSA and OLoRA move part of the base into the adapter: off, the rest is not the base)."""
    from tunesmith.methods import get_method

    method = get_method(config.method.name)
    rewrites = getattr(method, "rewrites_base", None)
    return bool(method.saves_adapter) and not (rewrites is not None and rewrites(config.method))


def before_training(model, encoded: dict[str, list], config, meta: dict, autocast) -> str | None:
    """Set up the reference before anything calls the loss (batch-size probe, base scores, training): a frozen
    copy, or the cached log-probabilities of every training and validation pair. Returns a line for the log."""
    configure(model, config)
    # Dropout off, as TRL does (disable_dropout): the policy is compared with a reference that runs without it,
    # and a dropped-out policy would start away from its reference (step 1's loss is log 2 only without it).
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    mode = reference_mode(config)
    inner = innermost_model(model)
    if mode == "copy":
        reference = copy.deepcopy(inner).eval()
        reference.requires_grad_(False)
        _REFERENCES[inner] = _Reference("copy", reference)
        return "reference: a frozen copy of the model before training (train.reference: copy)"
    _REFERENCES[inner] = _Reference(mode)
    if mode == "cached":
        pairs = [p for name in ("train", "validation") for p in encoded.get(name, [])]
        _cache_reference(model, pairs, config.train.batch_size, autocast, adapter_off=_adapter_is_base(config))
        return f"reference: log-probabilities of {len(pairs)} pairs computed once, before training (train.reference: cached)"
    if mode == "adapter":
        return "reference: the model with its adapter switched off (train.reference: adapter)"
    return None


@torch.no_grad()
def _cache_reference(model, pairs: list[EncodedPair], batch_size: int, autocast, adapter_off: bool) -> None:
    """The model as it is now, before training, scores every pair once: with its adapter off where that is the
    base, else as it is (full fine-tuning; PiSSA's fresh adapter on its residual reproduces the base)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    off = _peft(model).disable_adapter() if adapter_off else contextlib.nullcontext()
    with off, autocast():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, 0).items()}
            logps, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            for pair, chosen, rejected in zip(chunk, logps[: len(chunk)].tolist(), logps[len(chunk) :].tolist()):
                pair.ref_chosen, pair.ref_rejected = chosen, rejected
    model.train(was_training)


def _reference_logps(model, batch: dict[str, torch.Tensor], settings: _Settings) -> torch.Tensor | None:
    """The reference's summed log-probabilities of the batch's 2B rows, or None without a reference. A model
    that no training set up (`tunesmith eval` of a finished run) has the adapter-off one where that is the
    base, else none (a full fine-tuning's frozen copy is gone with its run)."""
    if "ref_logps" in batch:
        return batch["ref_logps"]
    found = _REFERENCES.get(innermost_model(model))
    unset = "adapter" if settings.adapter_is_base and hasattr(_peft(model), "disable_adapter") else "none"
    mode = found.mode if found is not None else unset
    if mode in ("none", "cached"):  # cached: a batch from outside the cached splits (the test split) has none
        return None
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    with torch.no_grad():
        if mode == "copy":
            assert found is not None and found.model is not None
            return sequence_logps(found.model, *args)[0]
        with _peft(model).disable_adapter():
            return sequence_logps(model, *args)[0]


def _peft(model):
    """The PEFT model under accelerate's wrapper (DDP's `.module`), where disable_adapter lives."""
    while (
        hasattr(model, "module") and isinstance(model.module, torch.nn.Module) and not hasattr(model, "disable_adapter")
    ):
        model = model.module
    return model


# ---------------------------------------------------------------------------------------------------
# The loss


@dataclass
class _Stats:
    """Sums over the pairs since the last read, kept apart for training and validation."""

    sums: dict[str, float] = field(default_factory=dict)
    pairs: int = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, tensor in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(tensor.detach().float().sum())

    def read(self) -> dict[str, float]:
        out = {key: value / self.pairs for key, value in self.sums.items()} if self.pairs else {}
        self.sums, self.pairs = {}, 0
        return out


_STATS = {True: _Stats(), False: _Stats()}  # model.training -> its sums


def _answer_logps(model, batch: dict[str, torch.Tensor], settings) -> AnswerLogps:
    """The batch's log-probabilities under the model, and under the reference where the loss has one."""
    logps, tokens = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    pairs = logps.shape[0] // 2
    reference = _reference_logps(model, batch, settings) if NEEDS_REFERENCE[settings.loss_type] else None
    return AnswerLogps(
        logps[:pairs],
        logps[pairs:],
        tokens[:pairs],
        tokens[pairs:],
        None if reference is None else reference[:pairs].to(logps.dtype),
        None if reference is None else reference[pairs:].to(logps.dtype),
    )


def _losses(model, batch: dict[str, torch.Tensor], settings) -> tuple[torch.Tensor, dict]:
    answers = _answer_logps(model, batch, settings)
    result = pair_losses(
        settings.loss_type,
        answers,
        beta=settings.beta,
        label_smoothing=settings.label_smoothing,
        simpo_gamma=settings.simpo_gamma,
    )
    losses = result.losses
    if settings.loss_type == "orpo":  # ORPO's SFT term: the chosen answer's NLL per token
        losses = losses - answers.chosen / answers.chosen_tokens.clamp(min=1)
    stats = {
        "rewards_chosen": result.chosen_rewards,
        "rewards_rejected": result.rejected_rewards,
        "rewards_margin": result.chosen_rewards - result.rejected_rewards,
        "rewards_accuracy": (result.chosen_rewards > result.rejected_rewards).float(),
        "logps_chosen": answers.chosen.detach(),
        "logps_rejected": answers.rejected.detach(),
    }
    return losses, stats


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    settings = _settings(model)
    losses, stats = _losses(model, batch, settings)
    record = _STATS[bool(model.training)]
    record.add(stats)
    record.pairs += losses.shape[0]
    return losses.sum(), torch.tensor(losses.shape[0])


def step_metrics(training: bool) -> dict[str, float]:
    """The means of the rewards, margins and log-probabilities since the last call, for metrics.jsonl: training
    ones at each log line, validation ones (`eval_` prefixed by the loop) with each validation pass."""
    return _STATS[training].read()


# The run's loss settings, kept on the model as the loss's chunk size is (train/loss.py): every caller of
# loss_sum (training, validation, the batch-size probe) passes only the model and the batch.
_SETTINGS_ATTR = "_tunesmith_preference"


@dataclass(frozen=True)
class _Settings:
    loss_type: str
    beta: float
    label_smoothing: float
    simpo_gamma: float
    adapter_is_base: bool  # switching the adapter off gives the base model (not PiSSA's residual)


def configure(model, config) -> None:
    train = config.train
    settings = _Settings(
        train.loss_type, train.beta, train.label_smoothing, train.simpo_gamma, _adapter_is_base(config)
    )
    setattr(innermost_model(model), _SETTINGS_ATTR, settings)


def _settings(model):
    settings = getattr(innermost_model(model), _SETTINGS_ATTR, None)
    if settings is None:
        raise RuntimeError("the preference loss was not configured for this model (tasks.preference.configure)")
    return settings


# ---------------------------------------------------------------------------------------------------
# Test metrics


@torch.no_grad()
def evaluate_test(model, tokenizer, examples: list[PreferenceExample], config, meta: dict | None = None):
    """Preference accuracy (the chosen answer has the higher log-probability, summed and per token), mean
    log-probabilities, and, where a reference exists, the rewards, their margin and accuracy; greedy answers to
    the first eval.report_samples prompts for the report."""
    if config.eval.max_samples is not None:
        examples = examples[: config.eval.max_samples]
    if not examples:
        return {}, []
    configure(model, config)
    encoded = encode(examples, tokenizer, config)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    settings = _settings(model)
    rows: list[dict] = []
    sums: dict[str, float] = {}
    for start in range(0, len(encoded), config.eval.batch_size):
        chunk = encoded[start : start + config.eval.batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id or 0).items()}
        answers = _answer_logps(model, batch, settings)
        chosen_avg, rejected_avg = answers.averages()
        stats = {
            "preference_accuracy": (answers.chosen > answers.rejected).float(),
            "preference_accuracy_per_token": (chosen_avg > rejected_avg).float(),
            "logps_chosen": answers.chosen,
            "logps_rejected": answers.rejected,
        }
        if answers.ref_chosen is not None and answers.ref_rejected is not None:  # the DPO family's rewards
            chosen_rewards = settings.beta * (answers.chosen - answers.ref_chosen)
            rejected_rewards = settings.beta * (answers.rejected - answers.ref_rejected)
            stats |= {
                "rewards_accuracy": (chosen_rewards > rejected_rewards).float(),
                "rewards_margin": chosen_rewards - rejected_rewards,
                "rewards_chosen": chosen_rewards,
                "rewards_rejected": rejected_rewards,
            }
        for key, values in stats.items():
            sums[key] = sums.get(key, 0.0) + float(values.float().sum())
        for i, pair in enumerate(chunk):
            example = examples[start + i]
            prompt = example.prompt if isinstance(example.prompt, str) else example.prompt[-1]["content"]
            rows.append(
                {
                    "where": pair.where,
                    "prompt": prompt,
                    "reference": example.chosen,
                    "rejected": example.rejected,
                    "logp_chosen": float(answers.chosen[i]),
                    "logp_rejected": float(answers.rejected[i]),
                    "prefers_chosen": bool(answers.chosen[i] > answers.rejected[i]),
                }
            )
    model.train(was_training)
    metrics = {key: value / len(encoded) for key, value in sums.items()}
    metrics["test_samples"] = len(encoded)
    _add_samples(model, tokenizer, examples, rows, config)
    return metrics, rows


def _add_samples(model, tokenizer, examples: list[PreferenceExample], rows: list[dict], config) -> None:
    """The report's side-by-side samples: the model's own answer to the first prompts, beside the chosen one."""
    shown = [(e.prompt, row) for e, row in zip(examples, rows) if isinstance(e.prompt, list)]
    shown = shown[: config.eval.report_samples]
    for row in rows:
        row["prediction"] = None  # generated for the shown ones only: generation is the slow part
    if not shown:
        return
    answers = chat.generate(
        model,
        tokenizer,
        [prompt for prompt, _ in shown],
        max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size,
        chat_template=config.data.chat_template,
    )
    for (_, row), answer in zip(shown, answers):
        row["prediction"] = answer
