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
        metrics[f"ndcg@{k}"] = float(
            sum(ndcg_score([[r for r, _ in g]], [[p for _, p in g]], k=k) for g in ranked) / len(ranked)
        )
        metrics[f"mrr@{k}"] = float(sum(_reciprocal_rank(g, k) for g in ranked) / len(ranked))
        metrics["ranked_queries"] = len(ranked)
    return metrics


def _reciprocal_rank(group: list[tuple[float, float]], k: int) -> float:
    """1 / rank of the first relevant passage in the top k. Passages with the same predicted score count in
    every order of the tie alike (the expected value), as sklearn's `ndcg_score` averages ties (McSherry &
    Najork 2008): sorting would rank them in file order, and a model that scores everything alike would
    score an MRR of 1 on a file that lists each query's relevant passage first."""
    above = 0  # passages ranked strictly above the current tie
    for score in sorted({p for _, p in group}, reverse=True):
        if above >= k:
            break
        tied = [r for r, p in group if p == score]
        relevant = sum(r >= RELEVANT for r in tied)
        if relevant:
            # P(the first relevant passage is the j-th of the tie) = C(n - j, relevant - 1) / C(n, relevant)
            n = len(tied)
            return sum(
                math.comb(n - j, relevant - 1) / math.comb(n, relevant) / (above + j)
                for j in range(1, n - relevant + 2)
                if above + j <= k
            )
        above += len(tied)
    return 0.0


def tfidf_cosine(train_texts: list[str], queries: list[str], passages: list[str]) -> list[float]:
    """Cosine similarity of TF-IDF vectors (fitted on the training texts), a BM25-like lexical scorer."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True).fit(train_texts)
    q, p = vectorizer.transform(queries), vectorizer.transform(passages)
    scores = q.multiply(p).sum(axis=1)  # rows are L2-normalised, so the dot product is the cosine
    return [float(s) if not math.isnan(float(s)) else 0.0 for s in scores.A1]
