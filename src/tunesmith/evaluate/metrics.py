"""Metrics shared by tasks. rouge-score is the reference ROUGE implementation (the one `evaluate` wraps)."""

from __future__ import annotations

import math

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_scores(predictions: list[str], references: list[str], types=ROUGE_TYPES) -> list[dict[str, float]]:
    """Per-example ROUGE F-measures with stemming, as in the summarisation literature (Lin 2004;
    the Porter stemmer as in the original ROUGE-1.5.5 `-m`)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    return [{t: s.fmeasure for t, s in scorer.score(ref, pred).items()} for pred, ref in zip(predictions, references)]


def rouge(predictions: list[str], references: list[str], types=ROUGE_TYPES) -> dict[str, float]:
    """Mean ROUGE F-measures over examples (NaN for no examples)."""
    per_example = rouge_scores(predictions, references, types)
    return {t: (sum(s[t] for s in per_example) / len(per_example) if per_example else float("nan")) for t in types}


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure with stemming."""
    return rouge(predictions, references, ("rougeL",))["rougeL"]


def length_stats(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean lengths in words of outputs and references and their ratio: ROUGE F rewards neither
    padding nor truncation, so a ratio far from 1 says where the score is lost."""
    if not predictions:
        return {}
    generated = sum(len(p.split()) for p in predictions) / len(predictions)
    reference = sum(len(r.split()) for r in references) / len(references)
    return {"gen_words": generated, "ref_words": reference, "length_ratio": generated / max(reference, 1e-9)}


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to the reference after trimming surrounding whitespace."""
    if not predictions:
        return float("nan")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)


def perplexity(mean_token_loss: float) -> float:
    return math.exp(min(mean_token_loss, 50.0))
