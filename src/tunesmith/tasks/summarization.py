"""Summarization and other sequence-to-sequence tasks: BART, T5, mT5, BERT2BERT encoder-decoders.

A record has a source text and a target text (`source`/`target`; document/summary, article/highlights,
text/summary, input/output and dialogue/summary are recognised, `data.columns` maps any others). The
encoder reads the source, with the task prefix T5-family models were pretrained with; the decoder
learns the target, every target token carrying loss and nothing else. Scores: ROUGE-1/2/L F-measures
(rouge-score, stemmed) and length statistics of beam-searched summaries, against the Lead baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from tunesmith.data.chat_template import IGNORE_INDEX
from tunesmith.data.formats import task_columns
from tunesmith.errors import TunesmithError
from tunesmith.tasks.progress import GenerationProgress
from tunesmith.train.loss import innermost_model, token_loss_sum

peft_task_type = "SEQ_2_SEQ_LM"
target_unit = "tok"  # count_targets counts target tokens

# Column names of the common summarisation sets (XSum/SAMSum, CNN/DailyMail, ...), in the order tried.
SOURCE_NAMES = ("source", "document", "article", "dialogue", "text", "input")
TARGET_NAMES = ("target", "summary", "highlights", "output")
CANONICAL = ("source", "target")

# T5 was pretrained multi-task with "summarize: " before every summarisation source (Raffel et al. 2020,
# appendix D) and mT5 shares its tokenisation conventions; other models either have their own prefix in
# `task_specific_params` (which wins) or none.
T5_FAMILY = ("t5", "mt5")
T5_PREFIX = "summarize: "


@dataclass
class SourceTarget:
    where: str
    source: str
    target: str | None  # None: a record to summarise (predict input), not one to learn from
    columns: tuple[str, ...] = ()  # the record's columns, for error messages

    def content_key(self) -> tuple:
        return ("source_target", self.source, self.target)


@dataclass
class EncodedPair:
    input_ids: list[int]
    labels: list[int]  # target ids ending in the end token; every one carries loss
    where: str
    truncated: bool = False  # the source was cut at data.max_length
    full_length: int = 0  # source tokens before cutting

    @property
    def trained_tokens(self) -> int:
        return len(self.labels)


def load_processor(resolved, model_cfg):
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(resolved, model_cfg)


def model_class():
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM


# ---------------------------------------------------------------------------------------------------
# Records -> examples


def _pick(fields: dict, mapped: str | None, names: tuple[str, ...], other: str | None = None) -> str | None:
    if mapped is not None:
        return mapped if mapped in fields else None
    return next((n for n in names if n in fields and n != other), None)


def _text(value, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise TunesmithError(
            f"the {what} is {type(value).__name__}, not a string",
            where=where,
            fix=f"give every record its {what} as text",
        )
    if not value.strip():
        raise TunesmithError(f"the {what} is empty", where=where, fix=f"fill in the {what}, or remove the record")
    return value


def _columns_fix() -> str:
    return "map yours with data.columns, e.g. data.columns: {source: <document column>, target: <summary column>}"


def normalise(records: list, data_cfg) -> tuple[list[SourceTarget], str]:
    """Source/target records. A record without a target column is kept with target None (what `predict`
    reads); `setup` refuses such records in the splits that train or score."""
    columns = task_columns(data_cfg, CANONICAL, "summarization")
    examples, formats = [], []
    for record in records:
        fields = record.fields
        found = tuple(map(str, fields))
        source_name = _pick(fields, columns.get("source"), SOURCE_NAMES)
        if source_name is None:
            wanted = columns.get("source") or "/".join(SOURCE_NAMES)
            raise TunesmithError(
                f"no source column {wanted!r} (columns found: {', '.join(found) or 'none'})",
                where=record.where,
                fix=_columns_fix(),
            )
        target_name = _pick(fields, columns.get("target"), TARGET_NAMES, other=source_name)
        if target_name is None and "target" in columns:
            raise TunesmithError(
                f"no target column {columns['target']!r} (columns found: {', '.join(found)})",
                where=record.where,
                fix=_columns_fix(),
            )
        source = _text(fields[source_name], f"source ({source_name!r})", record.where)
        target = None if target_name is None else _text(fields[target_name], f"target ({target_name!r})", record.where)
        examples.append(SourceTarget(record.where, source, target, found))
        formats.append(f"{source_name}/{target_name}" if target_name else f"{source_name} (no target)")
    return examples, (formats[0] if formats else "source/target")


def to_record(example: SourceTarget) -> dict:
    return (
        {"source": example.source} if example.target is None else {"source": example.source, "target": example.target}
    )


stratify_key = None  # plain random splits


def _require_targets(examples: list[SourceTarget], split: str) -> None:
    for example in examples:
        if example.target is None:
            raise TunesmithError(
                f"the {split} record has no target column ({'/'.join(TARGET_NAMES)}; columns found: "
                f"{', '.join(example.columns) or 'none'})",
                where=example.where,
                fix=_columns_fix(),
            )


# ---------------------------------------------------------------------------------------------------
# What the model wants: prefix, decoder start and end tokens


def model_facts(config) -> dict:
    """Read from the model's config (no weights): its type, the source prefix `data.source_prefix` resolves
    to, and the decoder start and end token ids the labels and generation need."""
    from transformers import AutoConfig, GenerationConfig

    from tunesmith.models.load import _pretrained_kwargs
    from tunesmith.models.resolve import resolve_model

    resolved = resolve_model(config.model.name, config.model.gguf_file)
    kwargs = _pretrained_kwargs(resolved, config.model)
    try:
        model_config = AutoConfig.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise TunesmithError(
            f"cannot read the model config in {resolved.path}: {exc}",
            where="model.name",
            fix="point model.name at a Hugging Face model directory or hub id",
        ) from None
    model_type = getattr(model_config, "model_type", "")
    if not getattr(model_config, "is_encoder_decoder", False):
        raise TunesmithError(
            f"{config.model.name} is a {model_type or 'model'} without a decoder that reads a source; summarization "
            "trains encoder-decoder models",
            where="model.name",
            fix="use bert2bert-minilm-l6 (offline), t5-small, facebook/bart-base or google/mt5-small; for a decoder LLM "
            "use task: chat with prompt/completion records",
        )
    try:
        generation = GenerationConfig.from_pretrained(resolved.path, **kwargs)
    except OSError:  # no generation_config.json: the model config carries the ids
        generation = GenerationConfig.from_model_config(model_config)

    def first(*values):
        for value in values:
            value = value[0] if isinstance(value, (list, tuple)) and value else value
            if isinstance(value, int):
                return value
        return None

    start = first(generation.decoder_start_token_id, getattr(model_config, "decoder_start_token_id", None))
    if start is None:
        raise TunesmithError(
            f"the config of {config.model.name} sets no decoder_start_token_id",
            where="model.name",
            fix="set decoder_start_token_id in the model's config.json (T5 uses the pad id, BART the end id)",
        )
    prefix = config.data.source_prefix
    if prefix == "auto":
        params = (getattr(model_config, "task_specific_params", None) or {}).get("summarization", {})
        prefix = params.get("prefix", T5_PREFIX if model_type in T5_FAMILY else "")
    return {
        "model_type": model_type,
        "source_prefix": prefix,
        "decoder_start_token_id": start,
        "eos_token_id": first(generation.eos_token_id, getattr(model_config, "eos_token_id", None)),
    }


def setup(splits, config) -> dict:
    """Every record that trains or is scored needs a target; the model's prefix and special ids; the
    Lead baseline's length (the mean training summary, in words)."""
    for name, examples in splits.items():
        _require_targets(examples, name)
    meta = model_facts(config)
    words = [len(e.target.split()) for e in splits.train]
    meta["lead_words"] = max(1, round(sum(words) / len(words))) if words else 1
    return meta


def model_kwargs(meta: dict) -> dict:
    return {}


def _end_id(meta: dict, tokenizer) -> int:
    """The token that ends a summary: the model's (generation stops on it), else the tokenizer's."""
    for value in (meta.get("eos_token_id"), tokenizer.eos_token_id, tokenizer.sep_token_id):
        if value is not None:
            return int(value)
    raise TunesmithError(
        "neither the model nor the tokenizer has an end-of-sequence token",
        where="model.name",
        fix="set eos_token_id in the model's config.json",
    )


def source_ids(example: SourceTarget, tokenizer, config, meta: dict) -> tuple[list[int], int]:
    """(the source's ids, cut to data.max_length, with the tokenizer's special tokens; its uncut length)."""
    text = meta["source_prefix"] + example.source
    full = tokenizer(text)["input_ids"]
    if len(full) <= config.data.max_length:
        return full, len(full)
    # Cut sources, as every summarisation paper does (BART: 1024 tokens); the tokenizer keeps its end token.
    return tokenizer(text, truncation=True, max_length=config.data.max_length)["input_ids"], len(full)


def target_ids(target: str, tokenizer, meta: dict) -> list[int]:
    """The target as labels: the tokenizer's own special tokens (BART's <s>, T5's </s>), minus a leading
    decoder start token (BERT2BERT's [CLS] is the decoder's first input, not something to predict), and
    ending in the end token, appended where the tokenizer adds none (Llama-style tokenizers), so the
    model learns to stop."""
    ids = tokenizer(target)["input_ids"]
    if ids and ids[0] == meta["decoder_start_token_id"]:
        ids = ids[1:]
    end = _end_id(meta, tokenizer)
    if not ids or ids[-1] != end:
        ids = ids + [end]
    return ids


def encode(examples: list[SourceTarget], tokenizer, config, meta: dict) -> list[EncodedPair]:
    # A target longer than data.max_target_length is an error, not cut: a cut summary teaches the model
    # either to stop mid-sentence (end token after the cut) or never to stop (no end token), and the damage
    # only shows later as lower scores. Targets are short, so raising the limit costs little decoder memory;
    # the message gives the length that fits and the first records over it.
    limit = config.data.max_target_length
    out, too_long = [], []
    for example in examples:
        ids, full_length = source_ids(example, tokenizer, config, meta)
        labels = target_ids(example.target, tokenizer, meta) if example.target is not None else []
        if len(labels) > limit:
            too_long.append((example.where, len(labels)))
        out.append(EncodedPair(ids, labels, example.where, full_length > len(ids), full_length))
    if too_long:
        longest = max(n for _, n in too_long)
        shown = ", ".join(f"{where} ({n} tokens)" for where, n in too_long[:3])
        more = f" and {len(too_long) - 3} more" if len(too_long) > 3 else ""
        raise TunesmithError(
            f"{len(too_long)} of {len(examples)} targets are longer than data.max_target_length={limit}: {shown}{more}",
            where=too_long[0][0],
            fix=f"set data.max_target_length: {longest} (targets are never cut), or shorten or drop those records",
        )
    return out


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(batch: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded sources and targets (pad positions of the target carry no loss)."""
    input_ids = _pad([e.input_ids for e in batch], pad_id)
    attention_mask = _pad([[1] * len(e.input_ids) for e in batch], 0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": _pad([e.labels for e in batch], IGNORE_INDEX),
    }


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


def decoder_inputs(model, labels: torch.Tensor) -> torch.Tensor:
    """Teacher forcing: the labels shifted right behind the decoder start token, by the model's own rule
    (T5's `_shift_right`, BART's and EncoderDecoderModel's `shift_tokens_right`). The few seq2seq models
    without `prepare_decoder_input_ids_from_labels` (Blenderbot, M2M100) shift the same way inside."""
    inner = innermost_model(model)
    if hasattr(inner, "prepare_decoder_input_ids_from_labels"):
        return inner.prepare_decoder_input_ids_from_labels(labels=labels)
    from transformers.models.bart.modeling_bart import shift_tokens_right

    return shift_tokens_right(labels, inner.config.pad_token_id, inner.config.decoder_start_token_id)


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over target tokens and their number; the loop divides once per optimizer step.
    Labels are not passed to the model: it would also compute (and discard) its own mean loss."""
    labels = batch["labels"]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_inputs(model, labels),
        decoder_attention_mask=(labels != IGNORE_INDEX).long(),
    ).logits
    return token_loss_sum(logits, labels)


# ---------------------------------------------------------------------------------------------------
# Generation, metrics, baseline


@torch.no_grad()
def generate(
    model, tokenizer, examples: list[SourceTarget], config, meta: dict, max_new_tokens: int | None = None
) -> list[str]:
    """Beam-search summaries with the `eval` settings, in batches of eval.batch_size."""
    cfg = config.eval
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    settings = dict(
        max_new_tokens=max_new_tokens or cfg.max_new_tokens,
        num_beams=cfg.num_beams,
        do_sample=False,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        # min_length counts the decoder start token. Always given, so that a model's own minimum
        # (bart-large-cnn: 56) never applies unasked; min_new_tokens beside it would draw a warning.
        min_length=cfg.min_new_tokens + 1 if cfg.min_new_tokens else 0,
        decoder_start_token_id=meta["decoder_start_token_id"],
        eos_token_id=_end_id(meta, tokenizer),
        pad_token_id=pad,
        use_cache=True,  # training turns the cache off in the config; generation needs it
    )
    if cfg.num_beams > 1:  # transformers warns about beam settings without beams
        settings.update(length_penalty=cfg.length_penalty, early_stopping=True)
    model.eval()
    summaries: list[str] = []
    shown = GenerationProgress(len(examples), "summaries")
    for start in range(0, len(examples), cfg.batch_size):
        ids = [source_ids(e, tokenizer, config, meta)[0] for e in examples[start : start + cfg.batch_size]]
        input_ids = _pad(ids, pad).to(model.device)
        attention_mask = _pad([[1] * len(r) for r in ids], 0).to(model.device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        # Encoder-decoder outputs begin with the decoder start token.
        summaries += [t.strip() for t in tokenizer.batch_decode(output[:, 1:], skip_special_tokens=True)]
        shown.advance(len(ids))
    return summaries


def _scores(predictions: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    from tunesmith.evaluate.metrics import ROUGE_TYPES, length_stats, rouge_scores

    per_example = rouge_scores(predictions, references)
    metrics = {t: sum(s[t] for s in per_example) / len(per_example) for t in ROUGE_TYPES}
    metrics.update(length_stats(predictions, references))
    metrics["test_samples"] = len(predictions)
    return metrics, per_example


def _scored(examples: list[SourceTarget], config) -> list[SourceTarget]:
    _require_targets(examples, "test")
    return examples[: config.eval.max_samples] if config.eval.max_samples is not None else examples


def _references(examples: list[SourceTarget]) -> list[str]:
    """The target summaries of examples that `_scored` returned: each has one (`_require_targets`)."""
    return [cast(str, e.target) for e in examples]


def evaluate_test(model, tokenizer, examples: list[SourceTarget], config, meta: dict) -> tuple[dict, list[dict]]:
    """ROUGE-1/2/L and length statistics of generated summaries of the test split."""
    examples = _scored(examples, config)
    if not examples:
        return {}, []
    predictions = generate(model, tokenizer, examples, config, meta)
    metrics, per_example = _scores(predictions, _references(examples))
    rows = [
        {"where": e.where, "prompt": e.source, "reference": e.target, "prediction": p, "rougeL": round(s["rougeL"], 4)}
        for e, p, s in zip(examples, predictions, per_example)
    ]
    return metrics, rows


def predict(
    model, tokenizer, examples: list[SourceTarget], config, meta: dict, max_new_tokens: int | None = None
) -> list[dict]:
    summaries = generate(model, tokenizer, examples, config, meta, max_new_tokens)
    rows = []
    for example, summary in zip(examples, summaries):
        row = {"source": example.source, "summary": summary}
        if example.target is not None:
            row["reference"] = example.target
        rows.append(row)
    return rows


def lead(source: str, words: int) -> str:
    """The Lead baseline: the source's opening, as long as an average training summary. News leads
    summarise their article (the Lead-3 bar of CNN/DailyMail); any summariser should clear it."""
    return " ".join(source.split()[:words])


def baseline(splits, config, meta: dict) -> dict | None:
    """Lead on the same test records as the model, scored with the same ROUGE."""
    examples = _scored(splits.test, config)
    if not examples:
        return None
    metrics, _ = _scores([lead(e.source, meta["lead_words"]) for e in examples], _references(examples))
    metrics["description"] = (
        f"The baseline is Lead: the first {meta['lead_words']} words of each source (the mean "
        "training-summary length), scored with the same ROUGE."
    )
    return metrics


def plots(rows: list[dict], meta: dict, folder) -> list[str]:
    return []


def describe(encoded: EncodedPair, tokenizer) -> str:
    return (
        "first training record as the model sees it:\n\nsource (encoder"
        + (", cut at data.max_length" if encoded.truncated else "")
        + "):\n"
        + tokenizer.decode(encoded.input_ids)
        + "\n\ntarget (decoder; every token carries loss):\n"
        + tokenizer.decode(encoded.labels)
    )
