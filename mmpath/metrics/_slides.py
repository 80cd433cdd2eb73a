"""Classification and regression scores (arrays, or a slide table): AUROC, balanced accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError

__all__ = [
    "auroc_macro_ovr",
    "ClassificationScores",
    "classification_scores",
    "regression_scores",
    "slide_classification",
]


def auroc_macro_ovr(y_true, proba: np.ndarray, classes) -> float:
    """Macro one-vs-rest AUROC over the classes that have positives and negatives in ``y_true``.

    Equals ``sklearn.metrics.roc_auc_score(y_true, proba, multi_class="ovr",
    average="macro")`` when every class is present (and, for two classes whose probabilities
    sum to 1, the binary AUROC of the second), and still works on a fold that lacks a class
    (sklearn raises there). NaN when no class has both positives and negatives.

    Parameters
    ----------
    y_true
        True class per row (values from ``classes``).
    proba
        ``(n, len(classes))`` scores, column ``j`` for ``classes[j]``.
    classes
        The class of each column.

    Example
    -------
    >>> auroc_macro_ovr(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]), [0, 1])
    1.0
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true)
    p = np.asarray(proba)
    scores = []
    for j, c in enumerate(classes):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        scores.append(roc_auc_score(pos, p[:, j]))
    return float(np.mean(scores)) if scores else float("nan")


@dataclass(frozen=True)
class ClassificationScores:
    """Scores of one set of slide predictions.

    Attributes
    ----------
    balanced_accuracy
        Mean recall over the classes present in the truth.
    auroc
        Binary: AUROC of the second class's probability; multi-class: macro one-vs-rest
        over the classes present (:func:`auroc_macro_ovr`). NaN when only one class is
        present in the truth.
    accuracy
        Fraction of correct calls.
    n
        Number of slides scored.
    classes
        Class names (index = column of the probabilities).
    confusion
        Counts, rows = truth, columns = call.
    """

    balanced_accuracy: float
    auroc: float
    accuracy: float
    n: int
    classes: tuple[str, ...]
    confusion: pd.DataFrame = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the scores and the confusion matrix as nested lists."""
        return {
            "balanced_accuracy": self.balanced_accuracy,
            "auroc": self.auroc,
            "accuracy": self.accuracy,
            "n": self.n,
            "classes": list(self.classes),
            "confusion": self.confusion.to_numpy().tolist(),
        }


def classification_scores(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> ClassificationScores:
    """Balanced accuracy, AUROC and the confusion matrix of class probabilities.

    Parameters
    ----------
    y_true
        Class index per slide (``0..len(classes)-1``).
    proba
        ``(n, n_classes)`` probabilities; the call is the arg-max.
    classes
        Class names.

    Returns
    -------
    A :class:`ClassificationScores`.

    Example
    -------
    >>> s = classification_scores([0, 1, 1], np.array([[.9, .1], [.2, .8], [.6, .4]]), ["a", "b"])
    >>> s.balanced_accuracy
    0.75
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    y = np.asarray(y_true, dtype=int).ravel()
    p = np.asarray(proba, dtype=float)
    names = tuple(str(c) for c in classes)
    if p.ndim != 2 or p.shape != (len(y), len(names)):
        raise DataError(f"proba must be (n={len(y)}, {len(names)} classes), got {p.shape}")
    if len(y) == 0:
        raise DataError("no slides to score")
    call = p.argmax(1)
    if len(names) == 2 and len(np.unique(y)) == 2:
        auroc = float(roc_auc_score(y, p[:, 1]))  # binary: the second class's probability
    else:
        auroc = auroc_macro_ovr(y, p, np.arange(len(names)))
    cm = confusion_matrix(y, call, labels=np.arange(len(names)))
    return ClassificationScores(
        balanced_accuracy=float(balanced_accuracy_score(y, call)),
        auroc=auroc,
        accuracy=float((call == y).mean()),
        n=len(y),
        classes=names,
        confusion=pd.DataFrame(cm, index=list(names), columns=list(names)),
    )


def regression_scores(y_true, y_pred) -> dict[str, float]:
    """R², mean absolute error and Pearson r of slide-level predictions.

    Example
    -------
    >>> regression_scores([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])["r2"]
    1.0
    """
    from sklearn.metrics import mean_absolute_error, r2_score

    y = np.asarray(y_true, dtype=float).ravel()
    f = np.asarray(y_pred, dtype=float).ravel()
    if len(y) != len(f) or len(y) < 2:
        raise DataError(f"need >= 2 paired values, got {len(y)} and {len(f)}")
    r = float(np.corrcoef(y, f)[0, 1]) if y.std() > 0 and f.std() > 0 else float("nan")
    return {"r2": float(r2_score(y, f)), "mae": float(mean_absolute_error(y, f)), "pearson": r}


def slide_classification(adata, *, label: str, key: str = K.MIL) -> ClassificationScores:
    """Score the slide calls of a slide table against its ``obs[label]``.

    Reads the class probabilities ``obs["<key>_<class>"]`` written by
    :func:`mmpath.tl.predict_slides` (the class order from ``uns["mmpath"]["mil"][key]``).
    Slides whose label is missing are left out.

    Parameters
    ----------
    adata
        A slide table (one row per slide).
    label
        obs column holding the true class names.
    key
        The ``key_added`` the predictions were written with.

    Returns
    -------
    A :class:`ClassificationScores`.

    Example
    -------
    >>> slides = mm.tl.predict_slides(tiles, "runs/mil1")
    >>> mm.io.join_metadata(slides, "labels.csv", columns=["subtype"])
    >>> mm.metrics.slide_classification(slides, label="subtype").auroc
    """
    if label not in adata.obs:
        raise DataError(f"the slide table has no obs[{label!r}]; join the labels first")
    rec = (adata.uns.get(K.UNS, {}).get(K.UNS_MIL, {}) or {}).get(key)
    if not rec or not rec.get("classes"):
        raise DataError(
            f"the slide table has no classification made with key {key!r}; run "
            "mm.tl.predict_slides with a classification model first"
        )
    classes = [str(c) for c in rec["classes"]]
    cols = [K.class_key(key, c) for c in classes]
    missing = [c for c in cols if c not in adata.obs]
    if missing:
        raise DataError(f"the slide table lacks the probability columns {missing}")
    truth = adata.obs[label]
    keep = truth.notna().to_numpy()
    names = truth[keep].astype(str).to_numpy()
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"labels {unknown} are not classes of the model ({classes})")
    y = np.array([classes.index(n) for n in names], dtype=int)
    proba = adata.obs.loc[keep, cols].to_numpy(float)
    return classification_scores(y, proba, classes)
