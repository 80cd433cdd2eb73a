"""Slide-level predictions of a trained MIL head: :func:`predict_slides`.

Reads each slide's bag from ``obsm[use_rep]`` (the embedding the model was trained on), runs
the head on *all* its tiles, writes the per-tile attention back to the tile table
(``obs["<key>_attention"]``, ``mil_attention`` by default; heads without attention leave it
out) and returns a **slide table**: one row per ``slide_id`` with the class probabilities
(``obs["<key>_<class>"]``) and the call (``obs[key]``), the value (regression,
``obs["<key>_value"]``) or the risk (survival, ``obs["<key>_risk"]``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath._version import __version__
from mmpath.errors import DataError
from mmpath.io import _prov

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["predict_slides", "embed_slides"]


def _check_features(adata, head) -> str:
    extra = head.extra
    use_rep = str(extra.get("use_rep"))
    have = _prov.plain(_prov.root(adata).get(K.UNS_EMBEDDINGS, {}) or {})
    if use_rep not in adata.obsm:
        keys = ", ".join(str(k) for k in adata.obsm) or "none"
        raise DataError(
            f"the model reads obsm[{use_rep!r}] ({extra.get('encoder') or '?'} features, "
            f"{extra.get('in_dim')}-d) but the table has only: {keys}; embed the tiles with "
            "that encoder first"
        )
    width = np.shape(adata.obsm[use_rep])[1]
    enc = (have.get(use_rep) or {}).get("encoder")
    if width != extra.get("in_dim") or (enc and extra.get("encoder") and enc != extra["encoder"]):
        raise DataError(
            f"obsm[{use_rep!r}] holds {enc or '?'} features ({width}-d) but the model was "
            f"trained on {extra.get('encoder') or '?'} features ({extra.get('in_dim')}-d); "
            "embed the tiles with the model's encoder"
        )
    return use_rep


def predict_slides(
    adata,
    model: Any,
    *,
    key_added: str = K.MIL,
    attention: bool = True,
    device: str | None = None,
) -> AnnData:
    """Predict one row per slide with a MIL head trained by ``mmpath train mil``.

    Parameters
    ----------
    adata
        A tile table (one slide or a cohort) or a list of tile tables, embedded with the
        model's encoder. Attention is written into each table in place.
    model
        The run folder (or its ``model/``) written by ``mmpath train mil``, or a loaded
        :class:`~mmpath.models.heads.TrainedHead`.
    key_added
        Prefix of the output columns.
    attention
        Write ``obs["<key_added>_attention"]`` (the head's weight per tile; sums to 1 per slide).
    device
        Torch device (default: CUDA if available, else CPU).

    Returns
    -------
    A slide table (AnnData, one row per slide): ``obs["n_tiles"]`` and the predictions (see
    the module docstring). A new object: the axis changes from tiles to slides.

    Example
    -------
    >>> slides = mm.tl.predict_slides(tiles, "runs/mil1")
    >>> slides.obs[["mil", "mil_positive"]]
    >>> mm.pl.tiles(tiles, color="mil_attention", slide_id="S000")
    """
    import anndata as ad
    import torch

    from mmpath._names import check_name
    from mmpath.models.heads import TrainedHead, load_trained_head
    from mmpath.models.heads.mil import logits_to_outputs

    check_name(key_added)
    tables = list(adata) if isinstance(adata, (list, tuple)) else [adata]
    if not tables:
        raise DataError("no tile tables given")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    head = (
        model
        if isinstance(model, TrainedHead)
        else load_trained_head(model, kind="mil", device=dev)
    )
    net, extra = head.model.eval(), head.extra
    task, classes = extra.get("task"), list(head.class_names)
    rows: list[dict[str, Any]] = []
    slides_prov: dict[str, Any] = {}
    att_key = f"{key_added}_attention"
    dev = next(net.parameters()).device
    for table in tables:
        _prov.require_tile_table(table)
        use_rep = _check_features(table, head)
        feats = table.obsm[use_rep]
        sid = table.obs[K.SLIDE_ID].astype(str).to_numpy()
        att = np.full(table.n_obs, np.nan, dtype=np.float32)
        known = _prov.plain(_prov.root(table)[K.UNS_SLIDES])
        for slide in dict.fromkeys(sid.tolist()):
            idx = np.flatnonzero(sid == slide)
            bag = np.asarray(feats[idx], dtype=np.float32)
            if not np.isfinite(bag).all():
                raise DataError(f"slide {slide!r} has NaN/inf embeddings in {use_rep}; re-embed it")
            with torch.no_grad():
                out = net(torch.from_numpy(bag).to(dev)[None])
            value = logits_to_outputs(
                out.logits, task, extra.get("y_mean", 0.0), extra.get("y_std", 1.0)
            )[0]
            row: dict[str, Any] = {K.SLIDE_ID: slide, K.N_TILES: len(idx)}
            if task == "classification":
                for c, v in zip(classes, value, strict=True):
                    row[K.class_key(key_added, c)] = float(v)
                row[key_added] = classes[int(value.argmax())]
            elif task == "regression":
                row[f"{key_added}_{K.MIL_VALUE}"] = float(value)
            else:
                row[f"{key_added}_{K.MIL_RISK}"] = float(value)
            if out.attention is not None:
                att[idx] = out.attention[0].float().cpu().numpy()
            rows.append(row)
            if slide in known:
                slides_prov[slide] = known[slide]
        record = {
            "model": head.path,
            "head": net.config.kind,
            "task": task,
            "classes": classes,
            "use_rep": use_rep,
        }
        if attention and net.has_attention:
            table.obs[att_key] = att
        _prov.record_run(table, "mil", key_added, record)
    obs = pd.DataFrame(rows)
    if obs[K.SLIDE_ID].duplicated().any():
        dup = obs.loc[obs[K.SLIDE_ID].duplicated(), K.SLIDE_ID].tolist()[:5]
        raise DataError(f"slides {dup} are in more than one table; pass each slide once")
    obs.index = pd.Index(obs[K.SLIDE_ID].to_numpy(), name=None)
    if task == "classification":
        obs[key_added] = pd.Categorical(obs[key_added], categories=classes)
    slides = ad.AnnData(obs=obs)
    _prov.new_root(slides, slides_prov, "mil", key_added, record)
    log.info("predicted %d slides with %s (%s)", len(obs), head.path or "a MIL head", task)
    return slides


def embed_slides(
    adata,
    encoder: str,
    *,
    use_rep: str,
    trust_remote_code: bool = False,
    key_added: str | None = None,
    device: str | None = None,
    weights: str | None = None,
) -> AnnData:
    """One embedding per slide from a pretrained slide encoder (TITAN, PRISM, GigaPath...).

    The table's features are checked against what the encoder needs (patch encoder, width,
    tile size, µm/px) before the model is loaded (see :mod:`mmpath.models.slide_encoders`).

    Parameters
    ----------
    adata
        A tile table (one slide or a cohort).
    encoder
        Slide encoder name (``titan``, ``prism``, ``gigapath-slide``, ``feather``).
    use_rep
        obsm key of the patch features the encoder reads (e.g. ``X_conch_v15``).
    trust_remote_code
        Allow model code from the encoder's Hugging Face repository (off by default).
    key_added
        obsm key of the slide embeddings in the returned table (default ``X_<encoder>``).
    device
        Torch device (default: CUDA if available, else CPU).
    weights
        Weights file or folder, for the slide encoders built here (``feather``); default: the
        Hugging Face cache.

    Returns
    -------
    A slide table (AnnData, one row per slide) with ``obsm[key_added]``.

    Example
    -------
    >>> slides = mm.tl.embed_slides(tiles, "titan", use_rep="X_conch_v15", trust_remote_code=True)
    """
    import anndata as ad
    import torch

    from mmpath.models.slide_encoders import check_slide_features, create_slide_encoder

    _prov.require_tile_table(adata)
    spec = check_slide_features(adata, encoder, use_rep=use_rep)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = create_slide_encoder(
        encoder, trust_remote_code=trust_remote_code, device=dev, weights=weights
    )
    key = key_added or K.rep_key(K.slugify(encoder))
    sid = adata.obs[K.SLIDE_ID].astype(str).to_numpy()
    rows, vecs = [], []
    xy_all = adata.obs[[K.X, K.Y]].to_numpy()  # once, not per slide
    feats = np.asarray(adata.obsm[use_rep])
    for slide in dict.fromkeys(sid.tolist()):
        idx = np.flatnonzero(sid == slide)
        size0 = _prov.tiling(adata, slide).get("size0", spec.tile_px)
        vecs.append(model.encode(feats[idx], xy_all[idx], int(round(size0))))
        rows.append({K.SLIDE_ID: slide, K.N_TILES: len(idx)})
    obs = pd.DataFrame(rows)
    obs.index = pd.Index(obs[K.SLIDE_ID].to_numpy(), name=None)
    slides = ad.AnnData(obs=obs)
    slides.obsm[key] = np.stack(vecs).astype(np.float32)
    slides.uns[K.UNS] = {
        K.UNS_VERSION: __version__,
        K.UNS_EMBEDDINGS: {key: {"encoder": encoder, "repo": spec.repo, "use_rep": use_rep}},
    }
    return slides
