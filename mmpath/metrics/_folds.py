"""Patient-grouped k-fold splits for slide-level learning."""

from __future__ import annotations

import numpy as np

from mmpath.errors import ConfigError, DataError

__all__ = ["patient_kfold"]


def patient_kfold(
    patients, labels=None, n_splits: int = 5, *, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train, test) index pairs that never put one patient on both sides.

    Stratified by ``labels`` when given (sklearn's ``StratifiedGroupKFold``, shuffled with
    ``seed``), else ``GroupKFold``. Each returned split is checked: no patient in both parts.

    Parameters
    ----------
    patients
        One patient id per sample (slides of one patient share it).
    labels
        Class per sample to stratify on (``None`` for regression / survival).
    n_splits
        Number of folds (>= 2, at most the number of patients).
    seed
        Shuffle seed of the stratified splitter.

    Returns
    -------
    A list of ``(train_idx, test_idx)`` integer arrays.

    Example
    -------
    >>> folds = patient_kfold(["p1", "p1", "p2", "p3"], [0, 0, 1, 1], n_splits=2)
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(patients).astype(str)
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {n_splits}")
    if n_groups < n_splits:
        raise DataError(
            f"{n_groups} patients cannot fill {n_splits} folds; lower the number of folds"
        )
    x = np.zeros((len(groups), 1))
    if labels is not None:
        y = np.asarray(labels).astype(str)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = list(splitter.split(x, y, groups))
    else:
        splits = list(GroupKFold(n_splits=n_splits).split(x, None, groups))
    out = []
    for train, test in splits:
        shared = set(groups[train]) & set(groups[test])
        if shared:  # pragma: no cover - the splitters guarantee it; this states it
            raise DataError(f"patients on both sides of a fold: {sorted(shared)[:5]}")
        out.append((np.asarray(train, dtype=int), np.asarray(test, dtype=int)))
    return out
