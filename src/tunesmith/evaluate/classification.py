"""Classification metrics, the TF-IDF baseline and the confusion-matrix plot.

scikit-learn is the reference implementation of these metrics (and of TF-IDF + logistic regression),
so we use it rather than re-deriving averages that are easy to get subtly wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def classification_metrics(
    references: Sequence[tuple[str, ...]], predictions: Sequence[tuple[str, ...]], labels: list[str], multi_label: bool
) -> dict:
    """Accuracy, precision/recall/F1 (macro, micro, weighted) and a per-class table."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from sklearn.preprocessing import MultiLabelBinarizer

    occurring: list[int] | list[str]  # label columns (multi-label) or label names
    if multi_label:
        binarizer = MultiLabelBinarizer(classes=labels)
        y_true, y_pred = binarizer.fit_transform(references), binarizer.transform(predictions)
        occurring = [i for i in range(len(labels)) if y_true[:, i].any() or y_pred[:, i].any()]
    else:
        y_true, y_pred = [r[0] for r in references], [p[0] for p in predictions]
        occurring = [name for name in labels if name in set(y_true) | set(y_pred)]
    metrics: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred))}  # subset accuracy for multi-label
    # Averages over the labels that the references or the predictions name (sklearn's default, and
    # seqeval's for entity types): a training label that the test split lacks and no prediction names has
    # no F1, and counting it as 0 would keep a perfect classifier's macro F1 below 1.
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=occurring, average=average, zero_division=0)
        metrics.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=None if multi_label else labels, average=None, zero_division=0
    )
    metrics["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(labels)
    }
    metrics["test_samples"] = len(references)
    return metrics


def tfidf_baseline(train_texts: list[str], train_labels: list[str], test_texts: list[str], seed: int = 42) -> list[str]:
    """Word 1-2 gram TF-IDF (sublinear tf) + logistic regression: the classic strong linear baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=2000, random_state=seed)
    )
    model.fit(train_texts, train_labels)
    return [str(label) for label in model.predict(test_texts)]


def plot_confusion(references: list[str], predictions: list[str], labels: list[str], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        references, predictions, labels=labels, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title("test split: true vs predicted")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
