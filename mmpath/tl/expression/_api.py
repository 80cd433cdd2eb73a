"""Public verbs: fit_expression, predict_expression, evaluate_expression."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov
from mmpath.metrics import per_gene_scores
from mmpath.tl.expression._model import ExpressionModel, resolve_params
from mmpath.tl.expression._targets import DEFAULT_TARGET_SUM, prepare_targets

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["fit_expression", "predict_expression", "evaluate_expression"]

Genomic = pd.DataFrame | str | None


def _use_rep(adata, use_rep: str | None) -> str:
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise DataError(
                f"no obsm[{use_rep!r}] in the table; embed it first (mm.tl.embed(tiles, "
                f"encoder=...)) or pick one of {list(adata.obsm)}"
            )
        return use_rep
    reps = [k for k in adata.obsm if k.startswith(K.REP_PREFIX) and not k.endswith(K.PROJ_SUFFIX)]
    if len(reps) != 1:
        raise DataError(
            f"the table has {len(reps)} embeddings ({reps}); pass use_rep= (one of them)"
            if reps
            else "the table has no embeddings; run mm.tl.embed(tiles, encoder=...) "
            "or mm.tl.morphology_features(tiles) first"
        )
    return reps[0]


def _encoder_of(adata, key: str) -> str | None:
    node = adata.uns.get(K.UNS, {}) or {}  # read only: a view must not be written to
    rec = _prov.plain(node.get(K.UNS_EMBEDDINGS, {}) or {}).get(key, {})
    return rec.get("encoder")


def _genomic(adata, genomic: Genomic, sample_key: str) -> tuple[np.ndarray, list[str]]:
    """Per-row genomic matrix from a per-sample DataFrame or an obsm key (constant per sample)."""
    if sample_key not in adata.obs:
        raise DataError(f"no obs[{sample_key!r}] to look up genomic vectors; pass sample_key=")
    samples = adata.obs[sample_key].astype(str).to_numpy()
    if isinstance(genomic, str):
        if genomic not in adata.obsm:
            raise DataError(f"no obsm[{genomic!r}] genomic vectors in the table")
        G = np.asarray(adata.obsm[genomic], np.float32)
        frame = pd.DataFrame(G).groupby(samples).nunique()
        if (frame > 1).to_numpy().any():
            raise DataError(
                f"obsm[{genomic!r}] varies within a {sample_key!r}: genomic vectors must be one "
                "per sample (bulk RNA, mutations, a latent from separate data), never per-spot "
                "values that could come from the spots' own expression"
            )
        cols = [f"{genomic}_{i}" for i in range(G.shape[1])]
    elif isinstance(genomic, pd.DataFrame):
        index = genomic.index.astype(str)
        missing = sorted(set(samples) - set(index))
        if missing:
            raise DataError(
                f"genomic vectors are missing for {len(missing)} sample(s) of obs[{sample_key!r}], "
                f"e.g. {missing[:3]}; index the DataFrame by those ids"
            )
        frame = genomic.set_axis(index).apply(pd.to_numeric, errors="coerce")
        G = frame.loc[samples].to_numpy(np.float32)
        cols = [str(c) for c in genomic.columns]
    else:
        raise DataError("genomic= must be a per-sample DataFrame or an obsm key")
    if not np.isfinite(G).all():
        raise DataError("genomic vectors contain NaN/inf or non-numbers; impute or drop them")
    return G, cols


def _check_no_leak(G: np.ndarray, Y: np.ndarray, cols: list[str], genes: list[str]) -> None:
    from mmpath.metrics import pearson_per_gene

    for j in range(G.shape[1]):
        r = pearson_per_gene(Y, np.repeat(G[:, j : j + 1], Y.shape[1], axis=1))
        worst = int(np.argmax(np.abs(r)))
        if abs(r[worst]) > 0.99:
            raise DataError(
                f"genomic column {cols[j]!r} equals target gene {genes[worst]!r} spot by spot "
                f"(r={r[worst]:.3f}): a genomic vector derived from the targets leaks them; "
                "compute it from separate data (bulk RNA, mutations) or inside the training fold"
            )


def _inputs(adata, *, genes, use_rep, genomic, fusion, sample_key, layer, normalize, target_sum):
    rep = _use_rep(adata, use_rep)
    X = np.asarray(adata.obsm[rep], np.float32)
    if not np.isfinite(X).all():
        raise DataError(f"obsm[{rep!r}] has NaN/inf rows; re-embed or drop those tiles")
    Y, spec = prepare_targets(adata, genes, layer=layer, normalize=normalize, target_sum=target_sum)
    genes_out = spec.pop("genes")
    G, cols = (None, None)
    if fusion is not None or genomic is not None:
        if genomic is None:
            raise DataError(f"fusion={fusion!r} needs genomic= (a per-sample DataFrame)")
        if fusion is None:
            raise DataError("genomic= was given without fusion=; pass fusion='concat' or 'gated'")
        G, cols = _genomic(adata, genomic, sample_key)
        _check_no_leak(G, Y, cols, genes_out)
    return rep, X, Y, G, cols, genes_out, spec


def fit_expression(
    adata,
    genes: str | list[str] | None = "hvg:50",
    *,
    method: str = "ridge",
    use_rep: str | None = None,
    genomic: Genomic = None,
    fusion: str | None = None,
    sample_key: str = K.SLIDE_ID,
    layer: str | None = None,
    normalize: bool | str = "auto",
    target_sum: float = DEFAULT_TARGET_SUM,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ExpressionModel:
    """Fit a model that predicts spot expression from tile embeddings.

    Parameters
    ----------
    adata
        Spot tiles (:func:`mmpath.pp.spot_tiles`) with embeddings in ``obsm`` and counts in ``X``.
    genes
        ``"hvg:N"``, ``"top:K"``, a panel (list, ``"A,B"`` or ``"file:panel.txt"``) or ``"all"``.
    method
        ``"ridge"`` (HEST-Benchmark: PCA(256) + ridge), ``"mlp"`` (a head on frozen
        embeddings) or ``"contrastive"`` (BLEEP-style alignment, nearest reference spots).
    use_rep
        obsm key of the embeddings; the table's only ``X_*`` key when ``None``.
    genomic
        Per-sample genomic vectors: a DataFrame indexed by ``obs[sample_key]`` values, or an
        obsm key constant within samples. Never derive it from the targets (it is checked).
    fusion
        ``"concat"`` (image + genomic features into one model) or ``"gated"`` (a learned gate,
        ``method="mlp"``).
    sample_key
        obs column naming each row's sample (for ``genomic``).
    layer
        Take counts from this layer instead of ``X``.
    normalize
        ``True``: ``log1p(normalize_total)``; ``False``: use values as they are; ``"auto"``:
        normalise integer counts only.
    target_sum
        Counts per spot after normalisation.
    params
        Hyper-parameters of the method (see ``mmpath.tl.expression.DEFAULTS``).
    seed
        Random seed.

    Returns
    -------
    An :class:`ExpressionModel` (``.save(folder)`` writes it).

    Example
    -------
    >>> model = mm.tl.fit_expression(spots, "hvg:50", method="ridge", use_rep="X_uni")
    >>> model.save("runs/expr1")
    """
    p = resolve_params(method, fusion, {**(params or {}), "seed": seed})
    rep, X, Y, G, cols, genes_out, spec = _inputs(
        adata,
        genes=genes,
        use_rep=use_rep,
        genomic=genomic,
        fusion=fusion,
        sample_key=sample_key,
        layer=layer,
        normalize=normalize,
        target_sum=target_sum,
    )
    if adata.n_obs < 3:
        raise DataError(f"only {adata.n_obs} spots: too few to fit an expression model")
    model = ExpressionModel.fit_arrays(
        X,
        Y,
        G,
        method=method,
        fusion=fusion,
        params=p,
        genes=genes_out,
        use_rep=rep,
        encoder=_encoder_of(adata, rep),
        targets={**spec, "sample_key": sample_key},
        genomic_columns=cols,
    )
    log.info(
        "fitted %s expression model: %d spots, %d genes from %s",
        method,
        adata.n_obs,
        len(genes_out),
        rep,
    )
    return model


def predict_expression(
    adata,
    model: ExpressionModel | str | os.PathLike[str],
    *,
    use_rep: str | None = None,
    genomic: Genomic = None,
    batch_size: int = 8192,
) -> AnnData:
    """Predict expression for every tile: a new AnnData (tiles x genes).

    The result keeps the tiles' ``obs``, ``obsm`` and provenance, so it works with scanpy
    (``sc.pp.pca``, ``sc.pp.neighbors``, ``sc.tl.leiden``) and with
    ``mm.pl.tiles(pred, slide, color="GENE")``. ``X`` holds the predictions on the model's
    target scale (log1p-normalised).

    Parameters
    ----------
    adata
        A tile table with the embeddings the model was fitted on.
    model
        An :class:`ExpressionModel` or the folder it was saved to.
    use_rep
        obsm key of the embeddings (the model's key by default).
    genomic
        Per-sample genomic vectors, for fusion models.
    batch_size
        Rows per prediction batch.

    Returns
    -------
    A new AnnData: ``adata.n_obs`` x ``len(model.genes)``.

    Example
    -------
    >>> pred = mm.tl.predict_expression(tiles, "runs/expr1")
    >>> mm.pl.tiles(pred, slide, color="EPCAM")
    """
    import anndata as ad

    if not isinstance(model, ExpressionModel):
        model = ExpressionModel.load(model)
    rep = use_rep or model.use_rep
    if rep not in adata.obsm:
        enc = model.encoder or "the model's encoder"
        raise DataError(
            f"no obsm[{rep!r}] in the table; embed the tiles with {enc} first "
            f"(mm.tl.embed(tiles, encoder={enc!r}) or `mmpath embed`)"
        )
    enc = _encoder_of(adata, rep)
    if model.encoder and enc and enc != model.encoder:
        raise DataError(
            f"obsm[{rep!r}] was made by {enc!r} but the model was fitted on {model.encoder!r} "
            "embeddings; embed with the same encoder"
        )
    G = None
    if model.fusion is not None:
        if genomic is None:
            raise DataError(f"the model fuses a genomic vector ({model.fusion}); pass genomic=")
        G, _ = _genomic(adata, genomic, model.targets.get("sample_key", K.SLIDE_ID))
    X = np.asarray(adata.obsm[rep])
    ok = np.isfinite(X).all(axis=1)  # tiles whose read failed carry NaN embeddings
    if not ok.any():
        raise DataError(f"obsm[{rep!r}] holds no finite row; re-embed the tiles")
    Y = np.full((len(X), len(model.genes)), np.nan, np.float32)
    Y[ok] = model.predict_arrays(X[ok], None if G is None else G[ok], batch_size=batch_size)
    if not ok.all():
        log.warning("%d tile(s) with non-finite embeddings are predicted as NaN", int((~ok).sum()))
    pred = ad.AnnData(X=Y, obs=adata.obs.copy(), var=pd.DataFrame(index=list(model.genes)))
    for key, value in adata.obsm.items():
        pred.obsm[key] = value
    pred.uns[K.UNS] = _prov.plain(adata.uns.get(K.UNS, {}) or {})
    pred.uns[K.UNS][K.UNS_EXPRESSION] = {
        **{k: v for k, v in model.config().items() if k != "params"},
        "params": {k: v for k, v in model.params.items() if not isinstance(v, (list, dict))},
    }
    return pred


def _mean_baseline(Y_train: np.ndarray, n_test: int) -> np.ndarray:
    return np.repeat(Y_train.mean(axis=0, keepdims=True), n_test, axis=0)


def evaluate_expression(
    adata,
    genes: str | list[str] | None = "hvg:50",
    *,
    method: str = "ridge",
    n_splits: int = 5,
    groups: str | None = K.SLIDE_ID,
    use_rep: str | None = None,
    genomic: Genomic = None,
    fusion: str | None = None,
    sample_key: str = K.SLIDE_ID,
    layer: str | None = None,
    normalize: bool | str = "auto",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Cross-validate an expression model by slide, as HEST-Benchmark does.

    Folds group rows by ``groups`` (tiles of one slide never sit on both sides); with fewer
    slides than folds they fall back to spatial blocks inside slides, with a warning. Genes
    are chosen once on the whole table (a fixed panel, as HEST); the model and a
    mean-expression baseline (the training folds' mean) are scored per gene on each held-out
    fold.

    Parameters
    ----------
    adata, genes, method, use_rep, genomic, fusion, sample_key, layer, normalize, params, seed
        As for :func:`fit_expression`.
    n_splits
        Number of folds.
    groups
        obs column whose values never straddle a split (``"slide_id"``; a patient column is
        stricter).
    out
        Write ``scores.csv``, ``summary.csv`` and ``pearson.png`` into this folder.

    Returns
    -------
    Long table: one row per (model, fold, gene) with ``pearson``, ``spearman``, ``mse``,
    ``constant``, ``n_test``. :func:`summarize_expression` gives the mean over genes.

    Example
    -------
    >>> scores = mm.tl.evaluate_expression(spots, "hvg:50", n_splits=5, out="runs/cv")
    >>> mm.tl.summarize_expression(scores)
    """
    from mmpath.metrics import group_kfold

    p = resolve_params(method, fusion, {**(params or {}), "seed": seed})
    rep, X, Y, G, cols, genes_out, spec = _inputs(
        adata,
        genes=genes,
        use_rep=use_rep,
        genomic=genomic,
        fusion=fusion,
        sample_key=sample_key,
        layer=layer,
        normalize=normalize,
        target_sum=DEFAULT_TARGET_SUM,
    )
    folds = group_kfold(adata, n_splits, groups=groups, seed=seed)
    name = method if fusion is None else f"{method}+{fusion}"
    rows = []
    for i, (tr, te) in enumerate(folds):
        model = ExpressionModel.fit_arrays(
            X[tr],
            Y[tr],
            None if G is None else G[tr],
            method=method,
            fusion=fusion,
            params=p,
            genes=genes_out,
            use_rep=rep,
            encoder=None,
            targets=spec,
            genomic_columns=cols,
        )
        pred = model.predict_arrays(X[te], None if G is None else G[te])
        for label, yhat in ((name, pred), ("mean", _mean_baseline(Y[tr], len(te)))):
            df = per_gene_scores(Y[te], yhat, genes_out)
            df.insert(0, "fold", i)
            df.insert(0, "model", label)
            df["n_test"] = len(te)
            rows.append(df)
    scores = pd.concat(rows, ignore_index=True)
    if out is not None:
        from mmpath.tl.expression._report import write_report

        write_report(scores, Path(out))
    return scores
