"""Cross-validation of a MIL task and its report (``mmpath train mil``).

:func:`run_mil` checks the cohort once (bags + labels, :func:`prepare_mil_data`), then runs one
:func:`mmpath.train.fit` per patient-grouped fold (``<out>/fold<k>/``, each with checkpoints
and exact resume) and, by default, a final fit on every sample (``<out>/model``, what
:func:`mmpath.tl.predict_slides` loads). It writes ``<out>/report/``:

* ``metrics.json``: per-fold and mean (± sd) balanced accuracy / AUROC (classification),
  R² / MAE / Pearson r (regression) or C-index (survival);
* ``predictions.csv``: the out-of-fold prediction of every sample;
* ``confusion.csv`` and ``roc.png`` (classification).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpath.errors import ConfigError
from mmpath.io._atomic import atomic_path
from mmpath.train import checkpoint as ckpt
from mmpath.train.tasks._mil_data import check_survival_batch

log = logging.getLogger(__name__)

__all__ = ["run_mil", "score_rows", "REPORT"]

REPORT = "report"
PREDICTIONS = "predictions.csv"


def score_rows(task, rows: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metrics of predictions ``pred`` for samples ``rows`` of ``task.data``."""
    from mmpath import metrics

    data, kind = task.data, task.cfg.data.task
    y = data.y[rows]
    if kind == "classification":
        s = metrics.classification_scores(y, pred, data.classes)
        return {"balanced_accuracy": s.balanced_accuracy, "auroc": s.auroc, "accuracy": s.accuracy}
    if kind == "regression":
        return metrics.regression_scores(y, pred)
    return {"c_index": metrics.concordance_index(y, pred, data.event[rows])}


def _pred_frame(task, rows: np.ndarray, pred: np.ndarray, fold: int) -> pd.DataFrame:
    data, kind = task.data, task.cfg.data.task
    df = pd.DataFrame({"sample": [data.names[r] for r in rows], "fold": fold})
    if kind == "classification":
        df["truth"] = [data.classes[i] for i in data.y[rows]]
        for j, c in enumerate(data.classes):
            df[f"p_{c}"] = pred[:, j]
        df["call"] = [data.classes[i] for i in pred.argmax(1)]
    elif kind == "regression":
        df["truth"], df["value"] = data.y[rows], pred
    else:
        df["time"], df["event"], df["risk"] = data.y[rows], data.event[rows], pred
    return df


def run_mil(cfg, *, resume: bool = False, on_step=None, tables: Any = None, labels: Any = None):
    """Cross-validate and train a MIL head as ``cfg`` says (see the module docstring).

    ``tables`` / ``labels`` (AnnData list / DataFrame) override ``cfg.data.tables`` /
    ``cfg.data.labels``. Returns the final fit's :class:`~mmpath.train.FitResult` (the last
    fold's when ``cv.final`` is false) with ``val`` holding the cross-validated means.

    Example
    -------
    >>> cfg = load_config(MILRunConfig, "configs/mil-abmil.yaml")
    >>> result = run_mil(cfg)
    >>> json.load(open(f"{cfg.out}/report/metrics.json"))["mean"]
    """
    from mmpath.metrics import patient_kfold
    from mmpath.train.core import fit
    from mmpath.train.tasks._mil_data import prepare_mil_data
    from mmpath.train.tasks.mil import MILTask

    out = Path(cfg.out)
    started = (out / "fold0").exists() or ckpt.checkpoint_path(out).exists()
    if started and not resume:
        raise ConfigError(
            f"{str(out)!r} already holds a training run; pass --resume (resume=True) to continue "
            "it or choose another out folder"
        )
    check_survival_batch(cfg.data.task, cfg.train.batch_size)
    data = prepare_mil_data(cfg, tables=tables, labels=labels)  # every check, before training
    kind = cfg.data.task
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    if cfg.cv.folds >= 2:
        strat = data.y if kind == "classification" else None
        splits = patient_kfold(data.groups, strat, cfg.cv.folds, seed=cfg.cv.seed)
    elif not cfg.cv.final:
        raise ConfigError("cv.folds < 2 and cv.final=false: nothing to train")
    frames, per_fold, result = [], [], None
    for k, (tr, te) in enumerate(splits):
        fold_dir = out / f"fold{k}"
        done = fold_dir / PREDICTIONS
        if resume and done.is_file():
            frames.append(pd.read_csv(done))
            per_fold.append(json.loads((fold_dir / "scores.json").read_text(encoding="utf-8")))
            continue
        holder: dict[str, MILTask] = {}

        def build(c, env, tr=tr, te=te, holder=holder):
            holder["task"] = MILTask(c, env, data, train_rows=tr, val_rows=te)
            return holder["task"]

        fold_cfg = replace(cfg, out=str(fold_dir))
        again = resume and ckpt.checkpoint_path(fold_dir).exists()
        result = fit(build, fold_cfg, resume=again, on_step=on_step)
        task = holder["task"]
        pred = task.predict_rows(te)
        scores = {"fold": k, "n_test": int(len(te)), **score_rows(task, te, pred)}
        df = _pred_frame(task, te, pred, k)
        with atomic_path(fold_dir / "scores.json") as tmp:
            tmp.write_text(json.dumps(scores), encoding="utf-8")
        with atomic_path(done) as tmp:
            df.to_csv(tmp, index=False)
        log.info("fold %d: %s", k, scores)
        frames.append(df)
        per_fold.append(scores)
    if cfg.cv.final:
        again = resume and ckpt.checkpoint_path(out).exists()
        result = fit(lambda c, env: MILTask(c, env, data), cfg, resume=again, on_step=on_step)
    mean = _write_report(out / REPORT, cfg, data, per_fold, frames)
    if result is None:  # resumed a finished run without a final model
        from mmpath.train.core import FitResult

        result = FitResult(out, out / f"fold{len(splits) - 1}" / "model", 0, [])
    result.val = [{"val": mean}] if mean else result.val
    return result


def _write_report(folder: Path, cfg, data, per_fold: list[dict], frames: list) -> dict[str, float]:
    if not per_fold:
        return {}
    keys = [k for k in per_fold[0] if k not in ("fold", "n_test")]
    mean = {k: float(np.nanmean([f[k] for f in per_fold])) for k in keys}
    sd = {k: float(np.nanstd([f[k] for f in per_fold])) for k in keys}
    oof = pd.concat(frames, ignore_index=True)
    report: dict[str, Any] = {
        "task": cfg.data.task,
        "head": cfg.model.head,
        "level": data.level,
        "folds": per_fold,
        "mean": mean,
        "sd": sd,
        "n_samples": len(data),
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        oof.to_csv(tmp / PREDICTIONS, index=False)
        if cfg.data.task == "classification":
            from mmpath.metrics import classification_scores

            classes = list(data.classes)
            y = np.array([classes.index(t) for t in oof["truth"]])
            proba = oof[[f"p_{c}" for c in classes]].to_numpy(float)
            pooled = classification_scores(y, proba, classes)
            report["pooled"] = pooled.as_dict()
            pooled.confusion.to_csv(tmp / "confusion.csv")
            _roc_png(tmp / "roc.png", y, proba, classes, oof["fold"].to_numpy())
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    shown = ", ".join(f"{k}={mean[k]:.3f}±{sd[k]:.3f}" for k in keys)
    log.info("cross-validated (%d folds): %s; report %s", len(per_fold), shown, folder)
    return mean


def _roc_png(
    path: Path, y: np.ndarray, proba: np.ndarray, classes: list, folds: np.ndarray
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    targets = [len(classes) - 1] if len(classes) == 2 else range(len(classes))
    for j in targets:
        truth = y == j
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, proba[:, j])
        name = classes[j] if len(classes) > 2 else f"{classes[j]} (pooled)"
        ax.plot(fpr, tpr, lw=2, label=f"{name}: AUC {auc(fpr, tpr):.3f}")
    if len(classes) == 2:
        for f in np.unique(folds):
            sel = folds == f
            if len(np.unique(y[sel])) == 2:
                fpr, tpr, _ = roc_curve(y[sel] == 1, proba[sel, 1])
                ax.plot(fpr, tpr, lw=0.8, alpha=0.5, label=f"fold {f}: AUC {auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (out-of-fold)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
