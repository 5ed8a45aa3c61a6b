"""Reranking metrics: how well predicted relevance scores agree with the reference scores.

Correlation over all pairs (Pearson, Spearman: scipy's reference implementations) says whether the
scores are calibrated and ordered; the per-query ranking metrics (MRR@10, NDCG@10: sklearn's
`ndcg_score`) say what a search system sees: is the relevant passage on top of each query's list.
The TF-IDF cosine between query and passage is the lexical baseline a cross-encoder must beat.
"""

from __future__ import annotations

import math
from collections import defaultdict

RELEVANT = 0.5  # a reference score at or above this counts as relevant for MRR


def ranking_metrics(queries: list[str], references: list[float], predictions: list[float], k: int = 10) -> dict:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import ndcg_score

    metrics: dict = {"test_samples": len(references)}
    if len(set(references)) > 1 and len(set(predictions)) > 1:  # correlation is undefined for a constant
        metrics["pearson"] = float(pearsonr(references, predictions)[0])
        metrics["spearman"] = float(spearmanr(references, predictions)[0])
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for query, reference, prediction in zip(queries, references, predictions):
        groups[query].append((reference, prediction))
    ranked = [g for g in groups.values() if len(g) > 1 and len({r for r, _ in g}) > 1]
    if ranked:
        metrics[f"ndcg@{k}"] = float(sum(ndcg_score([[r for r, _ in g]], [[p for _, p in g]], k=k) for g in ranked) / len(ranked))
        metrics[f"mrr@{k}"] = float(sum(_reciprocal_rank(g, k) for g in ranked) / len(ranked))
        metrics["ranked_queries"] = len(ranked)
    return metrics


def _reciprocal_rank(group: list[tuple[float, float]], k: int) -> float:
    order = sorted(group, key=lambda pair: -pair[1])[:k]
    return next((1.0 / (rank + 1) for rank, (reference, _) in enumerate(order) if reference >= RELEVANT), 0.0)


def tfidf_cosine(train_texts: list[str], queries: list[str], passages: list[str]) -> list[float]:
    """Cosine similarity of TF-IDF vectors (fitted on the training texts), a BM25-like lexical scorer."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True).fit(train_texts)
    q, p = vectorizer.transform(queries), vectorizer.transform(passages)
    scores = q.multiply(p).sum(axis=1)  # rows are L2-normalised, so the dot product is the cosine
    return [float(s) if not math.isnan(float(s)) else 0.0 for s in scores.A1]
