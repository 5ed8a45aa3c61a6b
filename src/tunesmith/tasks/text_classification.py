"""Text classification: single-label, multi-label, sentence-pair (cross-encoder) classification and reranking.

Any encoder (BERT, RoBERTa, DeBERTa, MiniLM) or decoder LLM gets a new classification head sized from
the labels found in the training split; the label names are saved in the model config (id2label), so
a reloaded model predicts names, not indices. Records need a text and a label column (and optionally
a second text for pairs); `data.columns` maps other names. A list-valued label, or
`data.multi_label: true` with `data.label_separator`, makes the task multi-label (sigmoid per label).
A `score` column instead of a label (relevance of `text_pair` to the query `text`, 0..1) trains a
reranker: one output with a sigmoid and binary cross-entropy on the score, as sentence-transformers'
CrossEncoder does, so the saved model loads there too; scored by correlation and per-query MRR/NDCG.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F

from tunesmith.data.formats import missing_column_error, task_columns
from tunesmith.errors import TunesmithError
from tunesmith.tasks.labels import check_labels_seen, head_kwargs, training_label_names

peft_task_type = "SEQ_CLS"
target_unit = "ex"  # count_targets counts examples

CANONICAL = ("text", "text_pair", "label", "score")


@dataclass
class LabeledText:
    where: str
    text: str
    labels: tuple[str, ...]
    text_pair: str | None = None
    score: float | None = None  # reranking: relevance of text_pair to text, 0..1

    def content_key(self) -> tuple:
        return ("labeled_text", self.text, self.text_pair)


@dataclass
class EncodedText:
    input_ids: list[int]
    where: str
    target: list[float] | int | float  # class index, a multi-hot row, or a relevance score
    weight: float = 1.0  # class weight of the example's label (1 without `train.class_weights`)
    token_type_ids: list[int] | None = None
    truncated: bool = False
    full_length: int = 0
    labels: tuple[str, ...] = field(default_factory=tuple)


def load_processor(resolved, model_cfg):
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(resolved, model_cfg)


def model_class():
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification


# ---------------------------------------------------------------------------------------------------
# Records -> examples


def _column(record, canonical: str, columns: dict, required: bool):
    name = columns.get(canonical, canonical)
    if name in record.fields:
        return record.fields[name]
    if canonical == "label" and "labels" in record.fields and "label" not in columns:
        return record.fields["labels"]
    if required:
        # Names the CSV header line (a table's columns are fixed there) and the likely column, e.g.
        # data.columns: {label: category}.
        taken = {columns.get(role, role) for role in CANONICAL if role != canonical}
        raise missing_column_error(record, canonical, name, needed_by="text classification", taken=taken)
    return None


def _labels_of(value, data_cfg, where: str) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        labels = tuple(str(v).strip() for v in value)
    elif isinstance(value, (str, int)):  # bool is an int: True/False labels work too
        text = str(value).strip()
        labels = tuple(p.strip() for p in text.split(data_cfg.label_separator)) if data_cfg.label_separator else (text,)
    else:
        raise TunesmithError(
            f"label {value!r} is not a string, whole number or list",
            where=where,
            fix="give each record a label such as 'positive' or a list of labels",
        )
    labels = tuple(label for label in labels if label)
    if not labels and not data_cfg.multi_label:
        raise TunesmithError("the label is empty", where=where, fix="give every record a label, or drop the record")
    return labels


def _score_of(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TunesmithError(f"score {value!r} is not a number", where=where, fix="give a relevance score from 0 to 1")
    try:
        score = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        raise TunesmithError(
            f"score {value!r} is not a number", where=where, fix="give a relevance score from 0 to 1"
        ) from None
    if not 0.0 <= score <= 1.0:
        raise TunesmithError(
            f"score {score} is outside 0..1",
            where=where,
            fix="scale relevance to 0..1 (graded 0-3 relevance: divide by 3); the model predicts a sigmoid",
        )
    return score


def normalise(records: list, data_cfg) -> tuple[list[LabeledText], str]:
    columns = task_columns(data_cfg, CANONICAL, "text classification")
    score_column = columns.get("score", "score")
    scored = bool(records) and score_column in records[0].fields  # the first record decides, like data.format: auto
    examples = []
    for record in records:
        text, pair = _texts(record, columns)
        if scored:
            if pair is None:
                raise TunesmithError(
                    "a scored record has no text_pair (the passage to score against the query)",
                    where=record.where,
                    fix="give every record text (query), text_pair (passage) and score",
                )
            score = _score_of(_column(record, "score", columns, required=True), record.where)
            examples.append(LabeledText(record.where, text, (), pair, score))
            continue
        labels = _labels_of(_column(record, "label", columns, required=True), data_cfg, record.where)
        examples.append(LabeledText(record.where, text, labels, pair))
    if scored:
        return examples, "relevance scores (reranking)"
    pairs = any(e.text_pair is not None for e in examples)
    multi = data_cfg.multi_label or any(len(e.labels) != 1 for e in examples)
    return examples, ("multi-label" if multi else "single-label") + (" pairs" if pairs else "")


def _texts(record, columns: dict) -> tuple[str, str | None]:
    """The record's text (required, not empty) and text_pair (optional), both checked to be strings."""
    text = _column(record, "text", columns, required=True)
    pair = _column(record, "text_pair", columns, required=False)
    for name, value in (("text", text), ("text_pair", pair)):
        if (value is not None or name == "text") and not isinstance(value, str):
            raise TunesmithError(
                f"{name} is {'null' if value is None else type(value).__name__}, not a string",
                where=record.where,
                fix="every text must be a string",
            )
    if not text.strip():
        raise TunesmithError("the text is empty", where=record.where, fix="remove the record or fill in its text")
    return text, pair


def normalise_prompts(records: list, data_cfg) -> tuple[list[LabeledText], str]:
    """What `predict` classifies: text (and text_pair) without a label; a label a record does have is read
    as its reference, written beside the prediction."""
    columns = task_columns(data_cfg, CANONICAL, "text classification")
    examples = []
    for record in records:
        text, pair = _texts(record, columns)
        given = _column(record, "label", columns, required=False)
        labels = _labels_of(given, data_cfg, record.where) if given is not None else ()
        examples.append(LabeledText(record.where, text, labels, pair))
    return examples, "texts to classify" + (" (pairs)" if any(e.text_pair is not None for e in examples) else "")


def to_record(example: LabeledText) -> dict:
    if example.score is not None:
        return {"text": example.text, "text_pair": example.text_pair, "score": example.score}
    row = {"text": example.text, "label": list(example.labels) if len(example.labels) != 1 else example.labels[0]}
    if example.text_pair is not None:
        row["text_pair"] = example.text_pair
    return row


def stratify_key(example: LabeledText):
    """Splits keep each label's share (single-label); multi-label examples stratify by their first label;
    relevance scores by whether the passage is relevant, so every split has both kinds."""
    if example.score is not None:
        return example.score >= 0.5
    return example.labels[0] if example.labels else ""


# ---------------------------------------------------------------------------------------------------
# Labels, head, encoding


def setup(splits, config) -> dict:
    """Label names from the training split; class weights when asked; checks on the other splits."""
    if splits.train and splits.train[0].score is not None:
        return {"labels": ["score"], "multi_label": False, "scores": True, "class_weights": None}
    train_labels = Counter(label for e in splits.train for label in e.labels)
    names = training_label_names(train_labels)
    check_labels_seen(splits, train_labels, lambda e: e.labels)
    multi = config.data.multi_label or any(len(e.labels) != 1 for e in splits.train)
    weights = None
    if config.train.class_weights:
        # sklearn's "balanced" weights: n_samples / (n_classes * count), so rare classes weigh more.
        total = sum(train_labels.values())
        weights = {name: total / (len(names) * train_labels[name]) for name in names}
    return {"labels": names, "multi_label": multi, "class_weights": weights}


def model_kwargs(meta: dict) -> dict:
    if meta.get("scores"):  # one relevance logit, CrossEncoder's layout (it applies the sigmoid itself)
        return dict(head_kwargs(meta["labels"]), problem_type="regression")
    problem = "multi_label_classification" if meta["multi_label"] else "single_label_classification"
    return dict(head_kwargs(meta["labels"]), problem_type=problem)


def encode(examples: list[LabeledText], tokenizer, config, meta: dict) -> list[EncodedText]:
    index = {name: i for i, name in enumerate(meta["labels"])}
    weights = meta.get("class_weights") or {}
    max_length = config.data.max_length
    out = []
    for example in examples:
        full = tokenizer(example.text, example.text_pair)
        encoded = tokenizer(example.text, example.text_pair, truncation=True, max_length=max_length)
        if meta.get("scores"):
            target: list[float] | int | float = example.score if example.score is not None else 0.0
        elif meta["multi_label"]:
            target = [0.0] * len(index)
            for label in example.labels:
                if label in index:
                    target[index[label]] = 1.0
        else:
            # -100 (no target): a `predict` input without a label, or with one the run never saw
            target = index.get(example.labels[0], -100) if example.labels else -100
        out.append(
            EncodedText(
                input_ids=encoded["input_ids"],
                where=example.where,
                target=target,
                weight=weights.get(example.labels[0], 1.0) if example.labels else 1.0,
                token_type_ids=encoded.get("token_type_ids"),
                truncated=len(full["input_ids"]) > max_length,
                full_length=len(full["input_ids"]),
                labels=example.labels,
            )
        )
    return out


def collate(batch: list[EncodedText], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        attention_mask[row, : len(example.input_ids)] = 1
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "weights": torch.tensor([e.weight for e in batch], dtype=torch.float32),
    }
    if batch[0].token_type_ids is not None:
        token_types = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            if example.token_type_ids is not None:  # a tokenizer gives them for every example or for none
                token_types[row, : len(example.token_type_ids)] = torch.tensor(example.token_type_ids)
        out["token_type_ids"] = token_types
    as_float = isinstance(batch[0].target, (list, float))  # multi-hot rows and relevance scores
    out["targets"] = torch.tensor([e.target for e in batch], dtype=torch.float32 if as_float else torch.long)
    return out


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def logits_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Each example is one target: the loss is a mean over examples."""
    return int(batch["input_ids"].shape[0])


def loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits_of(model, batch)
    targets = batch["targets"]
    if targets.dtype == torch.float32 and targets.dim() == 1:
        # Relevance scores: binary cross-entropy against the soft 0..1 target (CrossEncoder's default loss).
        per_example = F.binary_cross_entropy_with_logits(logits[:, 0], targets, reduction="none")
    elif targets.dtype == torch.float32:
        # Multi-label: a sigmoid per label, averaged over labels so each example weighs the same.
        per_example = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=-1)
    else:
        per_example = F.cross_entropy(logits, targets, reduction="none")
    return (per_example * batch["weights"]).sum(), torch.tensor(len(targets))


# ---------------------------------------------------------------------------------------------------
# Prediction and metrics


@torch.no_grad()
def _scores(model, tokenizer, examples: list[LabeledText], config, meta: dict) -> torch.Tensor:
    model.eval()
    encoded = encode(examples, tokenizer, config, meta)
    out = []
    for start in range(0, len(encoded), config.eval.batch_size):
        batch = collate(encoded[start : start + config.eval.batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = logits_of(model, batch)
        out.append(
            torch.sigmoid(logits) if meta["multi_label"] or meta.get("scores") else torch.softmax(logits, dim=-1)
        )
    return torch.cat(out).cpu() if out else torch.empty(0, len(meta["labels"]))


def _chosen(scores: torch.Tensor, meta: dict) -> list[tuple[str, ...]]:
    names = meta["labels"]
    if meta["multi_label"]:
        return [tuple(names[i] for i in (row >= 0.5).nonzero().flatten().tolist()) for row in scores]
    return [(names[int(row.argmax())],) for row in scores]


def predict(model, tokenizer, examples: list[LabeledText], config, meta: dict, **_) -> list[dict]:
    scores = _scores(model, tokenizer, examples, config, meta)
    if meta.get("scores"):
        return [
            {"text": e.text, "text_pair": e.text_pair, "score": round(float(row[0]), 6)}
            for e, row in zip(examples, scores)
        ]
    rows = []
    for example, row, chosen in zip(examples, scores, _chosen(scores, meta)):
        result: dict[str, Any] = {"text": example.text}
        if example.text_pair is not None:
            result["text_pair"] = example.text_pair
        result["labels" if meta["multi_label"] else "label"] = list(chosen) if meta["multi_label"] else chosen[0]
        result["scores"] = {name: round(float(s), 6) for name, s in zip(meta["labels"], row)}
        if example.labels:  # the record's own label, to compare with
            result["reference"] = list(example.labels) if meta["multi_label"] else example.labels[0]
        rows.append(result)
    return rows


def evaluate_test(model, tokenizer, examples: list[LabeledText], config, meta: dict) -> tuple[dict, list[dict]]:
    from tunesmith.evaluate.classification import classification_metrics

    if not examples:
        return {}, []
    scores = _scores(model, tokenizer, examples, config, meta)
    if meta.get("scores"):
        from tunesmith.evaluate.ranking import ranking_metrics

        predicted_scores = [float(row[0]) for row in scores]
        rows = [
            {
                "where": e.where,
                "prompt": f"{e.text} [SEP] {e.text_pair}",
                "reference": f"{e.score:.3f}",
                "prediction": f"{p:.3f}",
            }
            for e, p in zip(examples, predicted_scores)
        ]
        return ranking_metrics([e.text for e in examples], _relevance(examples), predicted_scores), rows
    predicted = _chosen(scores, meta)
    metrics = classification_metrics([e.labels for e in examples], predicted, meta["labels"], meta["multi_label"])
    rows = [
        {"where": e.where, "prompt": e.text, "reference": ", ".join(e.labels), "prediction": ", ".join(p)}
        for e, p in zip(examples, predicted)
    ]
    return metrics, rows


def baseline(splits, config, meta: dict) -> dict | None:
    """TF-IDF + logistic regression on the same split: the bar a fine-tuned encoder must clear (for
    reranking: the TF-IDF cosine between query and passage)."""
    if meta.get("scores") and splits.test:
        from tunesmith.evaluate.ranking import ranking_metrics, tfidf_cosine

        train_texts = [t for e in splits.train for t in (e.text, e.text_pair)]
        predicted = tfidf_cosine(train_texts, [e.text for e in splits.test], [e.text_pair for e in splits.test])
        metrics = ranking_metrics([e.text for e in splits.test], _relevance(splits.test), predicted)
        metrics["name"] = "tfidf cosine (query vs passage)"
        metrics["description"] = (
            "The baseline is the TF-IDF cosine between query and passage, fitted on the training split's texts: "
            "a lexical scorer that learns nothing from the relevance scores."
        )
        return metrics
    if meta["multi_label"] or not splits.test:
        return None
    from tunesmith.evaluate.classification import tfidf_baseline_metrics

    def texts_and_labels(examples: list[LabeledText]) -> tuple[list[str], list[str]]:
        return [_joined(e) for e in examples], [e.labels[0] for e in examples]

    # C and the n-gram range are chosen on validation as for any model: a baseline is there to be hard to beat.
    return tfidf_baseline_metrics(
        texts_and_labels(splits.train),
        texts_and_labels(splits.validation),
        [_joined(e) for e in splits.test],
        [e.labels for e in splits.test],
        meta["labels"],
        seed=config.seed,
    )


def _relevance(examples: list[LabeledText]) -> list[float]:
    """The relevance scores of reranking examples: the reader requires one on every record (`_score_of`)."""
    return [cast(float, e.score) for e in examples]


def _joined(example: LabeledText) -> str:
    return example.text if example.text_pair is None else f"{example.text} [SEP] {example.text_pair}"


def plots(rows: list[dict], meta: dict, folder) -> list[str]:
    from tunesmith.evaluate.classification import plot_confusion

    if meta["multi_label"] or meta.get("scores") or not rows:
        return []
    return [
        plot_confusion(
            [r["reference"] for r in rows], [r["prediction"] for r in rows], meta["labels"], folder / "confusion.png"
        )
    ]


def describe(encoded: EncodedText, tokenizer) -> str:
    target = f"score: {encoded.target}" if isinstance(encoded.target, float) else f"labels: {', '.join(encoded.labels)}"
    return f"first training record as the model sees it ({target}):\n\n" + tokenizer.decode(encoded.input_ids)
