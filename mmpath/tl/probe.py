"""Evaluate an embedding by how well a simple classifier reads a label off it.

A *linear probe* (standardised features + multinomial logistic regression) and a *kNN probe*
(k nearest neighbours on L2-normalised features, which ranks like cosine similarity, as in
DINO/UNI evaluations) are fit in cross-validation folds that never split a slide
(:mod:`mmpath.metrics`). Per fold: balanced accuracy, weighted F1 and macro one-vs-rest
AUROC, plus a confusion matrix; all from sklearn's metric functions. The only hand-written
piece, AUROC over the classes present in a fold (:func:`mmpath.metrics.auroc_macro_ovr`),
equals sklearn's multi-class ``roc_auc_score`` whenever every class is present (tested).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath import metrics
from mmpath._moved import moved
from mmpath.errors import DataError
from mmpath.io import _prov

log = logging.getLogger(__name__)

__all__ = ["linear_probe"]

METHODS = ("logreg", "knn")
METRICS = ("balanced_accuracy", "f1_weighted", "auroc_macro")


def get_rep(adata, use_rep: str) -> np.ndarray:
    """``obsm[use_rep]`` (or ``X`` for ``use_rep="X"``) as a dense float array."""
    if use_rep == "X":
        if adata.X is None:
            raise DataError("the table has no X matrix; pass use_rep= an obsm key")
        X = adata.X
    elif use_rep in adata.obsm:
        X = adata.obsm[use_rep]
    else:
        have = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise DataError(
            f"no obsm[{use_rep!r}] in the table (obsm keys: {have}); compute it first with "
            "mm.tl.embed(adata, encoder=...) or pass an existing key as use_rep="
        )
    X = _prov.numeric_rep(X, f"obsm[{use_rep!r}]" if use_rep != "X" else "X", dtype=None)
    if X.ndim != 2 or X.shape[0] != adata.n_obs:
        raise DataError(f"{use_rep!r} has shape {X.shape}; expected ({adata.n_obs}, dim)")
    return X


def _classifier(method: str, *, C: float, n_neighbors: int, n_train: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    if method == "logreg":
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)
        )
    # kNN reads unit vectors: Euclidean distance there ranks like cosine similarity.
    return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=min(n_neighbors, n_train)))


def _full_proba(model, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """predict_proba with one column per class of the whole table (0 for classes unseen)."""
    out = np.zeros((len(X), len(classes)))
    part = model.predict_proba(X)
    cols = np.searchsorted(classes, model.classes_)
    out[:, cols] = part
    return out


def linear_probe(
    adata,
    *,
    label: str,
    use_rep: str,
    method: str = "logreg",
    n_splits: int = 5,
    groups: str | None = K.SLIDE_ID,
    spatial_block: bool = True,
    C: float = 1.0,
    n_neighbors: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Cross-validated linear (or kNN) probe of ``obs[label]`` from an embedding.

    Folds are grouped by ``groups`` (slides by default) so that tiles of one slide never sit
    on both sides; with fewer slides than folds they are spatial blocks inside the slides,
    with a warning (:func:`mmpath.metrics.cv_groups`). Rows with a missing label are left
    out. Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        A tile table.
    label
        obs column with the class of each tile.
    use_rep
        obsm key of the features (e.g. ``"X_uni"``), or ``"X"``.
    method
        ``"logreg"``: StandardScaler + multinomial LogisticRegression(C); ``"knn"``:
        L2-normalised features + KNeighborsClassifier(n_neighbors).
    n_splits
        Number of cross-validation folds.
    groups
        obs column that must not be split across folds (``None``: split tiles freely).
    spatial_block
        Allow the spatial-block fallback (otherwise too few slides is an error).
    C
        Inverse regularisation strength of the logistic regression.
    n_neighbors
        k of the kNN probe (capped at the training-set size).
    seed
        Seed of the fold assignment and the solver.

    Returns
    -------
    A DataFrame with one row per fold (index ``0..n_splits-1``) and rows ``"mean"`` and
    ``"std"``; columns ``balanced_accuracy``, ``f1_weighted``, ``auroc_macro``, ``n_train``,
    ``n_test``. ``df.attrs`` holds ``"confusion_matrix"`` (a DataFrame summed over folds: rows
    true class, columns predicted), ``"confusion_matrices"`` (one per fold), ``"classes"``,
    ``"oof_proba"`` (each row's out-of-fold class probabilities) and ``"oof_true"`` (its label),
    ``"cv"`` (``"group"``, ``"spatial-block"`` or ``"row"``) and ``"params"``.

    Example
    -------
    >>> metrics = mm.tl.linear_probe(tiles, label="tissue_type", use_rep="X_uni")
    >>> metrics.loc["mean", "balanced_accuracy"]
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    from mmpath.metrics._folds import _cv_groups, folds_from_groups

    if method not in METHODS:
        raise DataError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    if label not in adata.obs:
        cols = ", ".join(map(str, adata.obs.columns[:12]))
        raise DataError(f"no obs column {label!r} to probe (obs columns: {cols}); pass label=")
    X_all = get_rep(adata, use_rep)
    keep = ~adata.obs[label].isna().to_numpy()
    if not keep.all():
        log.info("leaving out %d rows with no %r", int((~keep).sum()), label)
    sub = adata[keep] if not keep.all() else adata
    X = X_all[keep].astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        raise DataError(f"{use_rep!r} contains NaN or infinite values; re-compute it")
    # Integer codes for the fits and metrics (sklearn is markedly slower on string labels).
    classes, y = np.unique(sub.obs[label].astype(str).to_numpy(), return_inverse=True)
    codes = np.arange(len(classes))
    if len(classes) < 2:
        raise DataError(f"obs[{label!r}] has {len(classes)} class(es); a probe needs at least 2")

    cv = _cv_groups(sub, n_splits, groups, spatial_block)
    folds = folds_from_groups(cv, n_splits, y=y, seed=seed)
    rows: list[dict[str, Any]] = []
    cms = []
    oof = np.full((len(y), len(codes)), np.nan)  # out-of-fold probabilities (ROC curves)
    for i, (tr, te) in enumerate(folds):
        if len(np.unique(y[tr])) < 2:
            raise DataError(
                f"fold {i} trains on a single class; use fewer folds or more labelled slides"
            )
        model = _classifier(method, C=C, n_neighbors=n_neighbors, n_train=len(tr), seed=seed)
        model.fit(X[tr], y[tr])
        proba = _full_proba(model, X[te], codes)
        pred = proba.argmax(axis=1)
        oof[te] = proba
        rows.append(
            {
                "balanced_accuracy": float(balanced_accuracy_score(y[te], pred)),
                "f1_weighted": float(f1_score(y[te], pred, average="weighted", zero_division=0)),
                "auroc_macro": metrics.auroc_macro_ovr(y[te], proba, codes),
                "n_train": len(tr),
                "n_test": len(te),
            }
        )
        cms.append(confusion_matrix(y[te], pred, labels=codes))
    per_fold = pd.DataFrame(rows)
    df = pd.concat(
        [per_fold, per_fold.mean().to_frame("mean").T, per_fold.std(ddof=0).to_frame("std").T]
    )
    names = [str(c) for c in classes]
    df.attrs = {
        "confusion_matrix": pd.DataFrame(np.sum(cms, axis=0), index=names, columns=names),
        "confusion_matrices": [pd.DataFrame(c, index=names, columns=names) for c in cms],
        "classes": names,
        "oof_proba": pd.DataFrame(oof, index=np.asarray(sub.obs_names, dtype=str), columns=names),
        "oof_true": np.asarray(names)[y],
        "cv": cv.kind,
        "params": {
            "label": label,
            "use_rep": use_rep,
            "method": method,
            "n_splits": n_splits,
            "groups": groups,
            "spatial_block": spatial_block,
            "C": C,
            "n_neighbors": n_neighbors,
            "seed": seed,
            "n_obs": int(len(y)),
        },
    }
    log.info(
        "%s probe of %r on %s: balanced accuracy %.3f (%s folds)",
        method,
        label,
        use_rep,
        df.loc["mean", "balanced_accuracy"],
        cv.kind,
    )
    return df


__getattr__ = moved(__name__, {"auroc_macro_ovr": "mmpath.metrics.auroc_macro_ovr"})
