"""Cross-validation folds that respect slides and patients (or spatial blocks inside slides).

Tiles of one slide are strongly correlated (same patient, stain, scanner), so a fold that puts
tiles of one slide on both sides of a split measures memorisation, not generalisation. The
folds here group rows by slide (sklearn's ``StratifiedGroupKFold`` / ``GroupKFold``). With
fewer slides than folds they fall back to *spatial-block* cross-validation (Roberts et al.,
Ecography 2017): each slide is cut into square blocks of tiles from ``obs`` x/y and whole
blocks go to one side, so that neighbouring tiles rarely straddle a split. That is weaker
than slide grouping (tiles across a block border are still neighbours), so it warns.

Shared by every evaluation (tile probes, expression regression, slide-level learning): callers
take the folds of a table (:func:`group_kfold`), the row groups behind them (:func:`cv_groups`,
then :func:`folds_from_groups`), or folds of plain patient ids (:func:`patient_kfold`). One
splitter serves them all, and every fold assignment is deterministic for a given ``seed``.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["CVGroups", "cv_groups", "group_kfold", "folds_from_groups", "patient_kfold"]


class CVGroups(NamedTuple):
    """Row groups for cross-validation."""

    groups: np.ndarray  # (n_obs,) str: one label per row; rows sharing one never split
    kind: str  # "group" (e.g. whole slides), "spatial-block" or "row"


def _coords(adata) -> np.ndarray:
    if K.X in adata.obs and K.Y in adata.obs:
        return np.column_stack([adata.obs[K.X].to_numpy(float), adata.obs[K.Y].to_numpy(float)])
    if K.SPATIAL in adata.obsm:
        return np.asarray(adata.obsm[K.SPATIAL], dtype=float)[:, :2]
    raise DataError(
        "spatial-block folds need tile positions (obs 'x'/'y' or obsm 'spatial'); "
        "add more slides or pass spatial_block=False with groups=None"
    )


def _spatial_blocks(xy: np.ndarray, slide: np.ndarray, n_blocks: int) -> np.ndarray:
    """Label each row ``<slide>|<bx>,<by>``: a square grid of about ``n_blocks`` per slide."""
    labels = np.empty(len(xy), dtype=object)
    for sid in pd.unique(slide):
        rows = np.flatnonzero(slide == sid)
        pts = xy[rows]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        extent = np.maximum(hi - lo, 1e-9)
        # Square blocks whose grid over the bounding box has about n_blocks cells.
        side = math.sqrt(float(extent[0] * extent[1]) / n_blocks) if extent.min() > 1e-9 else 0
        if side <= 0:  # tiles on one line (or one point): cut the line into n_blocks pieces
            side = float(extent.max()) / n_blocks
        side = max(side, 1e-9)
        cell = np.minimum(np.floor((pts - lo) / side), np.ceil(extent / side) - 1).astype(int)
        cell = np.maximum(cell, 0)
        labels[rows] = [f"{sid}|{bx},{by}" for bx, by in cell]
    return labels.astype(str)


def cv_groups(
    adata,
    n_splits: int = 5,
    *,
    groups: str | None = K.SLIDE_ID,
    spatial_block: bool = True,
    blocks_per_fold: int = 3,
) -> CVGroups:
    """Row groups for ``n_splits``-fold cross-validation that never split a slide.

    Parameters
    ----------
    adata
        A tile (or spot) table.
    n_splits
        Number of folds.
    groups
        obs column whose values must never sit on both sides of a split (``"slide_id"``;
        a patient column is stricter). ``None`` splits rows freely (no grouping, no warning).
    spatial_block
        With fewer distinct ``groups`` values than ``n_splits``, fall back to spatial blocks
        inside each group (with a warning). ``False`` raises instead.
    blocks_per_fold
        Spatial blocks per fold and slide in the fallback (more blocks balance folds better,
        fewer keep neighbours apart).

    Returns
    -------
    :class:`CVGroups`: the per-row group labels and which kind of grouping was used.

    Example
    -------
    >>> g = cv_groups(tiles, 5)
    >>> g.kind
    'group'
    """
    return _cv_groups(adata, n_splits, groups, spatial_block, blocks_per_fold)


def _cv_groups(adata, n_splits, groups, spatial_block, blocks_per_fold=3) -> CVGroups:
    """:func:`cv_groups`; its warning points two frames up (the caller of the public API)."""
    if n_splits < 2:
        raise DataError(f"cross-validation needs n_splits >= 2, got {n_splits}")
    n = adata.n_obs
    if n < n_splits:
        raise DataError(f"only {n} rows for {n_splits} folds; use fewer folds")
    if groups is None:
        return CVGroups(np.asarray(adata.obs_names, dtype=str), "row")
    if groups not in adata.obs:
        raise DataError(
            f"no obs column {groups!r} to group folds by; pass groups= (e.g. a patient column) "
            "or groups=None to split rows freely"
        )
    col = adata.obs[groups]
    if col.isna().any():
        raise DataError(f"obs[{groups!r}] has missing values; fill them before cross-validation")
    values = col.astype(str).to_numpy()
    n_groups = len(pd.unique(values))
    if n_groups >= n_splits:
        return CVGroups(values, "group")
    if not spatial_block:
        raise DataError(
            f"only {n_groups} distinct {groups!r} value(s) for {n_splits} folds; use fewer "
            "folds, more slides, or spatial_block=True"
        )
    labels = _spatial_blocks(_coords(adata), values, n_splits * max(int(blocks_per_fold), 1))
    n_blocks = len(pd.unique(labels))
    if n_blocks < n_splits:
        raise DataError(f"only {n_blocks} spatial block(s) for {n_splits} folds; use fewer folds")
    warnings.warn(
        f"only {n_groups} distinct {groups!r} value(s) for {n_splits} folds: using "
        f"spatial-block folds inside slides ({n_blocks} blocks); neighbouring tiles across "
        "block borders are correlated, so scores are optimistic. Add slides for honest scores.",
        UserWarning,
        stacklevel=3,
    )
    return CVGroups(labels, "spatial-block")


def group_kfold(
    adata,
    n_splits: int = 5,
    *,
    groups: str | None = K.SLIDE_ID,
    spatial_block: bool = True,
    y: np.ndarray | None = None,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds as ``(train_rows, test_rows)`` index arrays, grouped by slide.

    Rows that share a group (see :func:`cv_groups`) always land on the same side. With class
    labels ``y`` the folds are also stratified (``StratifiedGroupKFold``); the assignment is
    deterministic for a given ``seed``.

    Parameters
    ----------
    adata
        A tile (or spot) table.
    n_splits
        Number of folds.
    groups, spatial_block
        See :func:`cv_groups`.
    y
        Optional class labels (n_obs,) to balance across folds.
    seed
        Seed of the shuffled group assignment.

    Returns
    -------
    A list of ``n_splits`` pairs of sorted integer row indices.

    Example
    -------
    >>> for train, test in group_kfold(tiles, 5):
    ...     model.fit(X[train], y[train])
    """
    g = _cv_groups(adata, n_splits, groups, spatial_block)
    return folds_from_groups(g, n_splits, y=y, seed=seed)


def folds_from_groups(
    g: CVGroups, n_splits: int, *, y: np.ndarray | None = None, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds of :func:`group_kfold` from groups already made by :func:`cv_groups`.

    Stratified by ``y`` when given (``StratifiedGroupKFold``), else ``GroupKFold``; both
    shuffled with ``seed``. Rows sharing a group never sit on both sides (checked).
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n = len(g.groups)
    uniq, codes = np.unique(g.groups, return_inverse=True)
    dummy = np.zeros((n, 1))
    if y is not None:
        y = np.asarray(y)
        if len(y) != n:
            raise DataError(f"y has {len(y)} labels for {n} rows")
        _, y_codes = np.unique(y.astype(str), return_inverse=True)
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class" is expected with few slides
            warnings.simplefilter("ignore", UserWarning)
            folds = list(splitter.split(dummy, y_codes, codes))
    else:
        splitter = GroupKFold(n_splits, shuffle=True, random_state=seed)
        folds = list(splitter.split(dummy, groups=codes))
    out = [(np.sort(tr), np.sort(te)) for tr, te in folds]
    for tr, te in out:
        shared = np.intersect1d(codes[tr], codes[te])
        if len(shared):  # pragma: no cover - the splitters guarantee it; this states it
            raise DataError(f"groups on both sides of a fold: {uniq[shared[:5]].tolist()}")
    empty = [i for i, (tr, te) in enumerate(out) if len(te) == 0 or len(tr) == 0]
    if empty:
        raise DataError(f"fold(s) {empty} came out empty; use fewer folds")
    log.debug("%d folds by %s", n_splits, g.kind)
    return out


def patient_kfold(
    patients, labels=None, n_splits: int = 5, *, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train, test) index pairs that never put one patient on both sides.

    Stratified by ``labels`` when given (sklearn's ``StratifiedGroupKFold``), else
    ``GroupKFold``; both shuffled with ``seed`` (:func:`folds_from_groups`). Each returned
    split is checked: no patient in both parts.

    Parameters
    ----------
    patients
        One patient id per sample (slides of one patient share it).
    labels
        Class per sample to stratify on (``None`` for regression / survival).
    n_splits
        Number of folds (>= 2, at most the number of patients).
    seed
        Shuffle seed of the fold assignment (stratified or not).

    Returns
    -------
    A list of ``(train_idx, test_idx)`` integer arrays.

    Example
    -------
    >>> folds = patient_kfold(["p1", "p1", "p2", "p3"], [0, 0, 1, 1], n_splits=2)
    """
    groups = np.asarray(patients).astype(str)
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {n_splits}")
    if n_groups < n_splits:
        raise DataError(
            f"{n_groups} patients cannot fill {n_splits} folds; lower the number of folds"
        )
    y = None if labels is None else np.asarray(labels).astype(str)
    folds = folds_from_groups(CVGroups(groups, "patient"), n_splits, y=y, seed=seed)
    return [(tr.astype(int), te.astype(int)) for tr, te in folds]
