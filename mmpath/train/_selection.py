"""Model selection for the head tasks: keep the best validation checkpoint, detect collapse.

Real data taught us both (issue 17): a U-Net on real stroma at a too-high learning rate reached
nucleus Dice 0.45 at epoch 6 and then collapsed to a constant P(nucleus) = 0.449 everywhere
(Dice 0.00) by epoch 8; exporting the *last* weights shipped the collapsed model.

* :class:`BestCheckpoint` writes the trainable weights of the best validation score so far to
  ``<out>/checkpoints/best.pt`` (atomically, so it survives a crash and a resume) and loads
  them back before export.
* :func:`collapse_warning` says when predictions are constant: one class everywhere while the
  targets hold several, or class probabilities that barely vary over the validation pixels.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from torch import nn

from mmpath.train import checkpoint as ckpt

log = logging.getLogger(__name__)

__all__ = ["BestCheckpoint", "collapse_warning"]

BEST = "best.pt"


_BEST_KEYS = ("model", "value", "epoch")


class BestCheckpoint:
    """The best-so-far trainable weights by one validation metric (higher is better).

    Parameters
    ----------
    out
        The run folder; the file is ``<out>/checkpoints/best.pt``. A best file is picked up
        again only when the run has a ``last.pt`` to resume from (a fresh run starts afresh).
    metric
        The validation metric's name (for the log and the file).

    Example
    -------
    >>> best = BestCheckpoint("runs/seg1", "dice")
    >>> best.update(module, 0.61, epoch=3)   # True: written
    >>> best.restore(module)                 # before export
    """

    def __init__(self, out: str | Path, metric: str) -> None:
        self.path = Path(out) / ckpt.CKPT_DIR / BEST
        self.metric = metric
        self.value = -math.inf
        self.epoch: int | None = None
        if self.path.is_file() and ckpt.checkpoint_path(out).is_file():
            state = ckpt.load_checkpoint(self.path, needed=_BEST_KEYS)
            self.value, self.epoch = float(state["value"]), int(state["epoch"])

    def update(self, module: nn.Module, value: float, *, epoch: int) -> bool:
        """Write the module's trainable weights if ``value`` beats the best so far."""
        if not np.isfinite(value) or value <= self.value:
            return False
        self.value, self.epoch = float(value), int(epoch)
        ckpt.save_checkpoint(
            self.path,
            {
                "model": ckpt.trainable_state(module),
                "value": self.value,
                "epoch": self.epoch,
                "metric": self.metric,
            },
        )
        return True

    def restore(self, module: nn.Module) -> bool:
        """Load the best weights into ``module``; ``False`` when none was recorded."""
        if self.epoch is None or not self.path.is_file():
            return False
        ckpt.load_trainable(module, ckpt.load_checkpoint(self.path, needed=_BEST_KEYS)["model"])
        log.info(
            "exporting the best validation checkpoint: epoch %d, %s=%.4f",
            self.epoch,
            self.metric,
            self.value,
        )
        return True


def collapse_warning(probs: np.ndarray, targets: np.ndarray, *, tol: float = 1e-3) -> str | None:
    """A one-line warning if predictions collapsed to a constant, else ``None``.

    Parameters
    ----------
    probs
        Class probabilities ``(N, C, H, W)`` over the validation set.
    targets
        Labels ``(N, H, W)`` (values outside ``[0, C)`` are ignored).
    tol
        A probability map whose standard deviation over all pixels is below this is constant.

    Example
    -------
    >>> msg = collapse_warning(probs, masks)
    """
    probs = np.asarray(probs, np.float32)
    C = probs.shape[1]
    t = np.asarray(targets).ravel()
    present = np.unique(t[(t >= 0) & (t < C)])
    if len(present) < 2:
        return None
    flat = probs.transpose(1, 0, 2, 3).reshape(C, -1)
    pred = flat.argmax(0)
    spread = float(flat.std(1).max())
    if spread < tol:
        return (
            f"segmentation collapsed: class probabilities are constant over the validation "
            f"pixels ({np.round(flat[:, 0], 3).tolist()}); lower train.lr or check the labels"
        )
    classes = np.unique(pred)
    if len(classes) == 1:
        return (
            f"segmentation collapsed: every validation pixel is predicted class {int(classes[0])}"
            f" while the targets hold {len(present)} classes; lower train.lr or raise the class "
            "weights (loss.class_weights)"
        )
    return None
