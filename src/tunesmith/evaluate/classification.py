"""Classification metrics, the TF-IDF baseline and the confusion-matrix plot.

scikit-learn is the reference implementation of these metrics (and of TF-IDF + logistic regression),
so we use it rather than re-deriving averages that are easy to get subtly wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


# The baseline's settings are chosen, not fixed: sklearn's default C=1 regularises TF-IDF features
# too hard for many-class sets of short texts (issue 15: 0.55 accuracy on 8 classes where C=10 gave
# 0.66), and word pairs help long texts but add noise to short ones.
C_GRID = (0.1, 1.0, 10.0, 100.0)
NGRAM_GRID = ((1, 1), (1, 2))  # simplest first: a tie keeps the smaller model
DEFAULT_SETTINGS = (1.0, (1, 2))  # sklearn's C and the classic word 1-2 grams, when there is no data to choose
CV_FOLDS = 3
MIN_PER_FOLD = 2  # cross-validation needs each fold to hold at least this many examples of some class


@dataclass(frozen=True)
class TfidfSettings:
    c: float
    ngrams: tuple[int, int]
    chosen_on: str  # "validation", "3-fold cross-validation on train", or why the defaults were kept

    @property
    def name(self) -> str:
        return f"tfidf+logreg (C={self.c:g}, ngrams {self.ngrams[0]}-{self.ngrams[1]}, chosen on {self.chosen_on})"


def single_threaded_blas() -> Any:
    """A context in which BLAS (under scipy's L-BFGS) runs on one thread. The baseline's matrices are small:
    more threads only spin, and on a busy CPU (2 shared cores, or beside torch's own threads) they made
    the settings grid's fits (8 on validation, 24 with 3-fold cross-validation, then the refit) take over
    a minute instead of a second."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _tfidf_model(c: float, ngrams: tuple[int, int], seed: int) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True),
        LogisticRegression(C=c, max_iter=2000, random_state=seed),
    )


def _cross_validation_folds(labels: list[str], seed: int) -> Any | None:
    """Stratified folds when every class can appear in each, else plain shuffled folds; None when train is
    too small to hold out anything."""
    from collections import Counter

    from sklearn.model_selection import KFold, StratifiedKFold

    if len(labels) < CV_FOLDS * MIN_PER_FOLD or len(set(labels)) < 2:
        return None
    if min(Counter(labels).values()) >= CV_FOLDS:
        return StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    return KFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)


def choose_tfidf_settings(
    train_texts: list[str],
    train_labels: list[str],
    validation_texts: list[str] | None = None,
    validation_labels: list[str] | None = None,
    seed: int = 42,
) -> TfidfSettings:
    """C and the n-gram range with the best accuracy on the validation split, or by cross-validation on
    train when there is no validation split (the same split the tuned model's early stopping reads, so
    both sides of the comparison are chosen on it)."""
    grid = [(c, ngrams) for ngrams in NGRAM_GRID for c in C_GRID]
    if validation_texts:

        def validation_score(c: float, ngrams: tuple[int, int]) -> float:
            model = _tfidf_model(c, ngrams, seed).fit(train_texts, train_labels)
            return float(model.score(validation_texts, validation_labels))

        best = max(grid, key=lambda setting: validation_score(*setting))  # max keeps the first of a tie
        return TfidfSettings(*best, "validation")
    folds = _cross_validation_folds(train_labels, seed)
    if folds is None:
        return TfidfSettings(*DEFAULT_SETTINGS, f"defaults: too few training examples ({len(train_labels)}) to choose")
    from sklearn.model_selection import cross_val_score

    def cv_score(c: float, ngrams: tuple[int, int]) -> float:
        return float(cross_val_score(_tfidf_model(c, ngrams, seed), train_texts, train_labels, cv=folds).mean())

    best = max(grid, key=lambda setting: cv_score(*setting))
    return TfidfSettings(*best, f"{CV_FOLDS}-fold cross-validation on train")


def tfidf_baseline_metrics(
    train: tuple[list[str], list[str]],
    validation: tuple[list[str], list[str]],
    test_texts: list[str],
    test_references: Sequence[tuple[str, ...]],
    labels: list[str],
    seed: int = 42,
) -> dict:
    """The classic strong linear baseline's test metrics (single-label): word n-gram TF-IDF (sublinear tf)
    + logistic regression, its settings chosen (choose_tfidf_settings) and refit on train. `name` says
    which settings were chosen on what, `description` is the sentence the run report prints above the
    table. `train` and `validation` are (texts, labels); an empty validation split falls back to
    cross-validation on train."""
    with single_threaded_blas():
        settings = choose_tfidf_settings(*train, *validation, seed=seed)
        model = _tfidf_model(settings.c, settings.ngrams, seed).fit(*train)
        predicted = [(str(label),) for label in model.predict(test_texts)]
    metrics = classification_metrics(test_references, predicted, labels, multi_label=False)
    metrics["name"] = settings.name
    metrics["description"] = (
        f"The baseline is {settings.name}: TF-IDF (sublinear tf) + logistic regression refit on the same "
        f"training split, its C chosen from {', '.join(f'{c:g}' for c in C_GRID)} and its word n-grams from "
        f"{', '.join(f'{a}-{b}' for a, b in NGRAM_GRID)}."
    )
    return metrics


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
