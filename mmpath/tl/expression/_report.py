"""The evaluation report: per-gene scores CSV, a summary CSV and a Pearson-r plot."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mmpath.io._atomic import atomic_path, atomic_write_text

SCORES_CSV, SUMMARY_CSV, PLOT_PNG = "scores.csv", "summary.csv", "pearson.png"


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean over genes per fold, then mean and std over folds, per model.

    Example
    -------
    >>> mm.tl.summarize_expression(scores)
    """
    per_fold = scores.groupby(["model", "fold"], observed=True)[["pearson", "spearman", "mse"]]
    per_fold = per_fold.mean().reset_index()
    agg = per_fold.groupby("model", observed=True)[["pearson", "spearman", "mse"]]
    out = agg.mean().add_suffix("_mean").join(agg.std(ddof=0).add_suffix("_std"))
    return out.reset_index().sort_values("pearson_mean", ascending=False, ignore_index=True)


def per_gene(scores: pd.DataFrame) -> pd.DataFrame:
    """Pearson r per gene (mean over folds), one column per model."""
    return scores.pivot_table(
        index="gene", columns="model", values="pearson", aggfunc="mean", observed=True
    )


def plot_scores(scores: pd.DataFrame, *, title: str | None = None):
    """Per-gene Pearson r of each model (sorted by the best model), as a matplotlib Figure."""
    import matplotlib

    matplotlib.use(matplotlib.get_backend())
    from matplotlib.figure import Figure

    table = per_gene(scores)
    best = summarize(scores)["model"].iloc[0]
    table = table.sort_values(best, ascending=False)
    fig = Figure(figsize=(max(5.0, 0.18 * len(table) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    for model in table.columns:
        ax.plot(range(len(table)), table[model].to_numpy(), marker="o", ms=3, lw=1, label=model)
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xticks(range(len(table)))
    ax.set_xticklabels(table.index, rotation=90, fontsize=6 if len(table) > 30 else 8)
    ax.set_ylabel("Pearson r (mean over folds)")
    ax.set_title(title or "Per-gene Pearson r, held-out folds")
    ax.legend(fontsize=8)
    return fig


def write_report(scores: pd.DataFrame, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``scores.csv``, ``summary.csv`` and ``pearson.png`` into ``out`` (atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SCORES_CSV, scores.to_csv(index=False))
    atomic_write_text(out / SUMMARY_CSV, summarize(scores).to_csv(index=False))
    fig = plot_scores(scores)
    with atomic_path(out / PLOT_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return {"scores": out / SCORES_CSV, "summary": out / SUMMARY_CSV, "plot": out / PLOT_PNG}
