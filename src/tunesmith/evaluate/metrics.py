"""Metrics shared by tasks. rouge-score is the reference ROUGE implementation (the one `evaluate` wraps)."""

from __future__ import annotations

import math


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure with stemming, as in the summarisation literature."""
    from rouge_score import rouge_scorer

    if not predictions:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return sum(scores) / len(scores)


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to the reference after trimming surrounding whitespace."""
    if not predictions:
        return float("nan")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)


def perplexity(mean_token_loss: float) -> float:
    return math.exp(min(mean_token_loss, 50.0))
