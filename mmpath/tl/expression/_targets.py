"""Expression targets: gene selection and normalisation, both recorded with the model.

Targets are ``log1p(normalize_total(counts, target_sum))`` (scanpy), the HEST-Benchmark
convention. A table whose ``X`` is already normalised (non-integer values, as in many
published ``.h5ad`` files) is used as is when ``normalize="auto"`` and the model records that.

Genes are chosen once, on the whole table, before any split (as HEST fixes its gene panel):

* ``"hvg:N"``: the ``N`` most highly variable genes (``sc.pp.highly_variable_genes``, seurat
  flavour on the normalised values);
* ``"top:K"``: the ``K`` genes of highest mean normalised expression;
* a list of names, a comma-separated string (``"EPCAM,KRT8"``) or ``"file:<path>"`` (one gene
  per line): a named panel; every gene must be present;
* ``"all"``: every gene.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmpath.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_TARGET_SUM = 1e4


def _matrix(adata, layer: str | None):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise DataError(f"no layer {layer!r} in the table; layers: {list(adata.layers)}")
    return adata.layers[layer]


def _is_counts(m) -> bool:
    data = m.data if sp.issparse(m) else np.asarray(m)
    sample = np.asarray(data).ravel()[:100_000]
    return bool(np.all(sample >= 0) and np.allclose(sample, np.round(sample)))


def normalized(
    adata,
    *,
    layer: str | None = None,
    normalize: bool | str = "auto",
    target_sum: float = DEFAULT_TARGET_SUM,
) -> tuple[Any, bool]:
    """``log1p(normalize_total(X))`` as a matrix (sparse stays sparse), and whether applied."""
    import scanpy as sc

    m = _matrix(adata, layer)
    if m is None:
        raise DataError("the table has no expression matrix (X is None)")
    if normalize == "auto":
        normalize = _is_counts(m)
        if not normalize:
            log.info("expression is not integer counts: taken as already log-normalised")
    elif normalize not in (True, False):
        raise DataError(f"normalize must be True, False or 'auto', got {normalize!r}")
    m = m.astype(np.float32)
    if not np.isfinite(m.data if sp.issparse(m) else m).all():
        raise DataError(
            "the expression matrix holds NaN/inf values; drop or impute those spots/genes first"
        )
    if not normalize:
        return m, False
    norm = sc.pp.normalize_total(_bare(m), target_sum=target_sum, inplace=False)["X"]
    return sc.pp.log1p(norm), True


def _bare(m):
    import anndata as ad

    return ad.AnnData(m)


def parse_genes(spec) -> tuple[str, Any]:
    """``(kind, value)`` of a gene spec: (hvg, N), (top, K), (panel, [...]) or (all, None)."""
    if spec is None or (isinstance(spec, str) and spec == "all"):
        return "all", None
    if isinstance(spec, str):
        head, _, tail = spec.partition(":")
        if head in ("hvg", "top") and tail:
            try:
                n = int(tail)
            except ValueError:
                raise DataError(f"gene spec {spec!r}: expected {head}:<int>, e.g. hvg:50") from None
            if n <= 0:
                raise DataError(f"gene spec {spec!r}: the number of genes must be > 0")
            return head, n
        if head == "file" and tail:
            path = Path(tail).expanduser()
            if not path.is_file():
                raise DataError(f"gene panel file {str(path)!r} does not exist (or is a folder)")
            names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            if not names:
                raise DataError(f"gene panel file {str(path)!r} is empty; one gene per line")
            return "panel", names
        names = [g.strip() for g in spec.split(",") if g.strip()]
    else:
        names = [str(g) for g in spec]
    if not names:
        raise DataError(
            f"the gene panel {spec!r} names no gene; pass hvg:N, top:K, all or gene names"
        )
    return "panel", names


def select_genes(adata, spec, matrix) -> list[str]:
    """Gene names chosen by ``spec`` (see the module docstring) on normalised ``matrix``."""
    kind, value = parse_genes(spec)
    names = np.asarray(adata.var_names, dtype=str)
    if kind == "all":
        return names.tolist()
    if kind == "panel":
        missing = [g for g in value if g not in set(names)]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{len(missing)} gene(s) of the panel are not in the table: {shown}; check "
                "the names (symbols vs Ensembl ids) or drop them from the panel"
            )
        if len(set(value)) != len(value):
            raise DataError("the gene panel lists a gene twice")
        return list(value)
    n = min(value, len(names))
    if value >= len(names):
        if value > len(names):
            log.warning("asked for %d genes, the table has %d: using all", value, len(names))
        return names.tolist()
    if kind == "top":
        means = np.asarray(matrix.mean(axis=0)).ravel()
        order = np.argsort(-means, kind="stable")[:n]
        return names[np.sort(order)].tolist()
    import scanpy as sc

    tmp = _bare(matrix)
    tmp.var_names = names
    # Rank by the normalised dispersion ourselves: scanpy's n_top_genes cut-off fails
    # (IndexError) when no gene has a finite dispersion, e.g. all-zero genes.
    sc.pp.highly_variable_genes(tmp, flavor="seurat")
    disp = tmp.var["dispersions_norm"].to_numpy(dtype=np.float64)
    n_var = int(np.isfinite(disp).sum())
    if n_var == 0:
        raise DataError(
            f"no gene varies across the {adata.n_obs} spots, so hvg:{value} cannot rank them; "
            "check the expression matrix (all zero?) or pass a gene panel"
        )
    if n_var < n:
        log.warning("only %d of the genes vary across spots; hvg:%d pads with others", n_var, n)
    disp = np.where(np.isfinite(disp), disp, -np.inf)
    order = np.argsort(-disp, kind="stable")[:n]
    return names[np.sort(order)].tolist()


def prepare_targets(
    adata,
    genes,
    *,
    layer: str | None = None,
    normalize: bool | str = "auto",
    target_sum: float = DEFAULT_TARGET_SUM,
) -> tuple[np.ndarray, dict]:
    """Dense float32 targets ``(n_obs, n_genes)`` and the spec that reproduces them."""
    if adata.n_vars == 0:
        raise DataError("the table has no genes (n_vars == 0); read the counts with the spots")
    matrix, applied = normalized(adata, layer=layer, normalize=normalize, target_sum=target_sum)
    chosen = select_genes(adata, genes, matrix)
    idx = adata.var_names.get_indexer(chosen)
    Y = matrix[:, idx]
    Y = np.asarray(Y.toarray() if sp.issparse(Y) else Y, dtype=np.float32)
    spec = {
        "genes_spec": genes if isinstance(genes, (str, type(None))) else "panel",
        "normalized": bool(applied),
        "target_sum": float(target_sum),
        "log1p": bool(applied),
        "layer": layer,
    }
    return Y, {"genes": chosen, **spec}


def targets_for(adata, genes: list[str], spec: dict) -> np.ndarray:
    """Targets of ``adata`` for a model's ``genes``, processed as the model's ``spec`` says."""
    missing = [g for g in genes if g not in set(adata.var_names)]
    if missing:
        raise DataError(f"{len(missing)} model gene(s) missing from the table, e.g. {missing[:3]}")
    matrix, _ = normalized(
        adata, layer=spec.get("layer"), normalize=spec["normalized"], target_sum=spec["target_sum"]
    )
    Y = matrix[:, adata.var_names.get_indexer(genes)]
    return np.asarray(Y.toarray() if sp.issparse(Y) else Y, dtype=np.float32)
