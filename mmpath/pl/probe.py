"""Pictures of a probe's cross-validation: the confusion matrix and one-vs-rest ROC curves of
:func:`mmpath.tl.linear_probe`'s result."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from mmpath.errors import DataError
from mmpath.io._atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["confusion_matrix", "roc"]


def _save(fig, save) -> None:
    if save is not None:
        with atomic_path(save) as tmp:
            fig.savefig(tmp, format="png", dpi=110)


def _need(result, key: str):
    if key not in getattr(result, "attrs", {}):
        raise DataError(
            f"expected the DataFrame returned by mm.tl.linear_probe (no attrs[{key!r}])"
        )
    return result.attrs[key]


def confusion_matrix(
    result,
    *,
    normalize: bool = True,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Draw a probe's confusion matrix summed over folds (rows: true class).

    Parameters
    ----------
    result
        The DataFrame returned by :func:`mmpath.tl.linear_probe`.
    normalize
        Colour by the fraction of each true class (counts are written in the cells).
    title
        Figure title.
    save
        Write a PNG here (atomically).

    Returns
    -------
    The matplotlib Figure.

    Example
    -------
    >>> mm.pl.confusion_matrix(mm.tl.linear_probe(tiles, label="tissue", use_rep="X_uni"))
    """
    import matplotlib.pyplot as plt

    cm = _need(result, "confusion_matrix")
    counts = cm.to_numpy().astype(float)
    rows = counts.sum(axis=1, keepdims=True)
    shown = counts / np.maximum(rows, 1) if normalize else counts
    n = len(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.7 * n))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(n):
        for j in range(n):
            dark = shown[i, j] > (0.5 if normalize else shown.max() / 2)
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                color="white" if dark else "black",
                fontsize=8,
            )
    ax.set_xticks(range(n), [str(c) for c in cm.columns], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(c) for c in cm.index])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(
        im,
        ax=ax,
        fraction=0.046,
        pad=0.04,
        label="fraction of the true class" if normalize else "tiles",
    )
    ax.set_title(title or "confusion matrix (summed over folds)", fontsize=9)
    fig.tight_layout()
    _save(fig, save)
    return fig


def roc(result, *, title: str | None = None, save: str | os.PathLike | None = None) -> Figure:
    """Draw one-vs-rest ROC curves of a probe's out-of-fold probabilities, with each AUC.

    Parameters
    ----------
    result
        The DataFrame returned by :func:`mmpath.tl.linear_probe`.
    title
        Figure title.
    save
        Write a PNG here (atomically).

    Returns
    -------
    The matplotlib Figure.

    Example
    -------
    >>> mm.pl.roc(mm.tl.linear_probe(tiles, label="tissue", use_rep="X_uni"), save="roc.png")
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    proba = _need(result, "oof_proba")
    true = np.asarray(_need(result, "oof_true")).astype(str)
    ok = ~proba.isna().any(axis=1).to_numpy()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    classes = [str(c) for c in proba.columns]
    for c in classes if len(classes) > 2 else classes[1:]:
        y = true[ok] == c
        if y.all() or not y.any():
            continue
        score = proba[c].to_numpy()[ok]
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, lw=1.5, label=f"{c} (AUC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "ROC, one vs rest (out-of-fold)", fontsize=9)
    fig.tight_layout()
    _save(fig, save)
    return fig
