"""Segmentation metrics: Dice / Jaccard tables of label masks.

Definitions, per class ``c`` with counts pooled over every pixel of every image given:

* Dice = 2 TP / (2 TP + FP + FN)   (the F1 score of the pixel labels)
* Jaccard (IoU) = TP / (TP + FP + FN)

**Empty-mask convention.** When a class is absent from both the prediction and the target
(TP + FP + FN = 0) its Dice and Jaccard are **1.0**: there was nothing to find and nothing was
found. This equals sklearn's ``f1_score`` / ``jaccard_score`` with ``zero_division=1.0``
(tested). The mean is the unweighted mean over every class in the class set (sklearn's
``average="macro"``), so an empty class counts as a perfect one; pass ``ignore_empty=True`` to
:func:`dice_jaccard` to average only over classes present in the target or prediction (MONAI's
``ignore_empty`` choice) instead.

Label values outside ``0..num_classes-1`` (other than ``ignore_index``) raise
:class:`~mmpath.errors.DataError`; so does a prediction whose shape differs from its target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmpath.errors import DataError

__all__ = ["confusion_counts", "dice_jaccard", "check_labels"]


def check_labels(
    mask: np.ndarray, num_classes: int, *, ignore_index: int | None = None, what: str = "mask"
) -> np.ndarray:
    """Return ``mask`` as an integer array; raise DataError on values outside the class set."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{what} holds non-integer values; masks must hold class labels")
    values = np.unique(arr)
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        raise DataError(
            f"{what} holds label value(s) {bad[:5]} outside the class set 0..{num_classes - 1}; "
            "fix the mask or raise num_classes (or set ignore_index for unannotated pixels)"
        )
    return arr


def confusion_counts(
    pred: np.ndarray | Sequence[np.ndarray],
    target: np.ndarray | Sequence[np.ndarray],
    num_classes: int,
    *,
    ignore_index: int | None = None,
) -> np.ndarray:
    """TP, FP, FN per class, pooled over every pixel: an ``(num_classes, 3)`` int array.

    ``pred`` and ``target`` are label masks (one array, or matching lists of arrays).
    """
    preds = [pred] if isinstance(pred, np.ndarray) else list(pred)
    targets = [target] if isinstance(target, np.ndarray) else list(target)
    if len(preds) != len(targets):
        raise DataError(f"{len(preds)} predictions but {len(targets)} targets")
    cm = np.zeros((num_classes, num_classes), np.int64)
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        p, t = np.asarray(p), np.asarray(t)
        if p.shape != t.shape:
            raise DataError(
                f"prediction {i} has shape {p.shape} but its target {t.shape}; they must match"
            )
        t = check_labels(t, num_classes, ignore_index=ignore_index, what=f"target {i}")
        p = check_labels(p, num_classes, what=f"prediction {i}")
        keep = t != ignore_index if ignore_index is not None else slice(None)
        idx = t[keep].astype(np.int64).ravel() * num_classes + p[keep].astype(np.int64).ravel()
        cm += np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    return np.stack([tp, fp, fn], 1)


def dice_jaccard(
    pred: np.ndarray | Sequence[np.ndarray],
    target: np.ndarray | Sequence[np.ndarray],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    ignore_empty: bool = False,
) -> pd.DataFrame:
    """Dice and Jaccard per class and their mean, as a table.

    Parameters
    ----------
    pred, target
        Label masks (one array or matching lists); counts are pooled over all pixels.
    num_classes
        Size of the class set (2 for a binary mask).
    class_names
        Row names (default ``"0"``, ``"1"``...).
    ignore_index
        Target value excluded from the counts (unannotated pixels).
    ignore_empty
        Exclude classes absent from both prediction and target from the mean (see the
        module docstring for the convention).

    Returns
    -------
    DataFrame indexed by class name plus ``"mean"``, with columns ``dice``, ``jaccard``,
    ``tp``, ``fp``, ``fn``.

    Example
    -------
    >>> mm.metrics.dice_jaccard(pred_masks, true_masks, 3, class_names=["bg", "tumour", "stroma"])
    """
    counts = confusion_counts(pred, target, num_classes, ignore_index=ignore_index)
    tp, fp, fn = counts.T.astype(np.float64)
    denom = tp + fp + fn
    empty = denom == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(empty, 1.0, 2 * tp / (2 * tp + fp + fn))
        jac = np.where(empty, 1.0, tp / denom)
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names for {num_classes} classes")
    df = pd.DataFrame(
        {
            "dice": dice,
            "jaccard": jac,
            "tp": tp.astype(np.int64),
            "fp": fp.astype(np.int64),
            "fn": fn.astype(np.int64),
        },
        index=pd.Index(names, name="class"),
    )
    use = ~empty if ignore_empty else np.ones(num_classes, bool)
    mean = {
        "dice": float(dice[use].mean()) if use.any() else 1.0,
        "jaccard": float(jac[use].mean()) if use.any() else 1.0,
        "tp": int(tp.sum()),
        "fp": int(fp.sum()),
        "fn": int(fn.sum()),
    }
    df.loc["mean"] = mean
    return df
