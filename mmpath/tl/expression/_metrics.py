"""Moved: per-gene correlation metrics live in :mod:`mmpath.metrics` (``mm.metrics``).

The old names still import from here, with a DeprecationWarning.
"""

from __future__ import annotations

from mmpath._moved import moved

__getattr__ = moved(
    __name__,
    {
        "pearson_per_gene": "mmpath.metrics.pearson_per_gene",
        "spearman_per_gene": "mmpath.metrics.spearman_per_gene",
        "per_gene_scores": "mmpath.metrics.per_gene_scores",
    },
)
