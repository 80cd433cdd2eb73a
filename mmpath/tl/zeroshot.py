"""Zero-shot classification of tiles and slides with an image-text encoder.

How it works (CLIP, Radford et al. 2021; for pathology CONCH/PLIP and MI-Zero, Lu et al. 2023):

* every class name is put into every prompt template ("an H&E image of {}."); each prompt is
  embedded by the text tower (L2-normalised), the prompts of one class are averaged and the
  mean is renormalised: the *template ensemble*, which is steadier than any single prompt;
* tile logits are ``logit_scale * cos(image, class)`` in the joint space
  (``obsm["X_<slug>_proj"]``, embedded on demand with :func:`mmpath.tl.embed`); a softmax
  over classes gives tile probabilities;
* a slide's logit for a class is the mean of its top-k tile logits for that class (MI-Zero's
  top-k pooling), and a softmax over classes gives the slide's probabilities.

``logit_scale`` is the model's own when it has one (the encoder contract's
``Encoder.learned_logit_scale``: its log-scale parameter, as open_clip and Hugging Face CLIP
store it, exponentiated), capped at 100 as in CLIP. Without one, 100 (CLIP's trained value).
Argmax labels do not depend on it; probabilities do.

Trust. The run record keeps the encoder's caveat (``mm.models.caveats.caveat``: demo and
random-weight models). When the encoder's registry entry declares the phrases its captions
were made of (the demo LiT model does), each class name is checked against them: it is *far*
when its best cosine to a training phrase (bare names, the model's text tower) is below the
lowest cosine of any training phrase to its nearest other training phrase, i.e. it is farther
from the training text than any training phrase is from the rest. Far classes get a warning and
are listed in the run record (``far_classes``), with the threshold.

``zero_shot`` keeps the tile table's axes, so it writes tile results in place; the slide
calls change the axis (one row per slide), so they come back as a new slide table, which is
the function's only return value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath._version import __version__
from mmpath.errors import DataError, ModelError
from mmpath.io import _prov

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = logging.getLogger(__name__)

__all__ = ["zero_shot", "DEFAULT_TEMPLATES", "class_embeddings"]

# Pathology prompt templates modelled on CONCH's zero-shot prompt set (Lu et al., Nature
# Medicine 2024), which also read well for PLIP/QuiltNet-style captions. "{}" is the class name.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "an image of {}.",
    "an image showing {}.",
    "a photomicrograph of {}.",
    "a photomicrograph showing {}.",
    "an example of {}.",
    "{} is shown.",
    "this is {}.",
    "there is {}.",
    "a histopathological image of {}.",
    "a histopathological image showing {}.",
    "a histopathology image showing {}.",
    "a histopathological photograph of {}.",
    "presence of {}.",
    "{} is present.",
    "an H&E stained image of {}.",
    "an H&E stained image showing {}.",
    "an H&E image of {}.",
    "an H&E image showing {}.",
    "{}, H&E stain.",
    "{}, H&E.",
)

DEFAULT_LOGIT_SCALE = 100.0
MAX_LOGIT_SCALE = 100.0


def _class_prompts(classes: Sequence[str] | Mapping[str, Sequence[str] | str]) -> dict[str, list]:
    """``{class: [names...]}`` from a list of names or a mapping of class -> synonyms."""
    if isinstance(classes, str):
        raise DataError(
            f'classes must be a list of names, not the string {classes!r}; e.g. ["tumor", "stroma"]'
        )
    if isinstance(classes, Mapping):
        out = {}
        for name, syn in classes.items():
            syn = [syn] if isinstance(syn, str) else list(syn)
            if not syn or not all(isinstance(s, str) and s.strip() for s in syn):
                raise DataError(f"class {name!r} needs at least one non-empty name to prompt with")
            out[str(name)] = [s.strip() for s in syn]
    else:
        names = list(classes)
        if not all(isinstance(c, str) and c.strip() for c in names):
            raise DataError(f"class names must be non-empty strings, got {names!r}")
        out = {}
        for c in names:
            if c.strip() in out:
                raise DataError(f"class {c.strip()!r} is given twice; give each class once")
            out[c.strip()] = [c.strip()]
    if len(out) < 2:
        raise DataError(
            f"zero-shot needs at least two class names, got {list(out)!r}; "
            'e.g. classes=["tumor", "stroma"]'
        )
    return out


def _check_templates(templates: Sequence[str] | None) -> list[str]:
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, str):
        templates = [templates]
    out = [str(t) for t in templates if str(t).strip()]
    if not out:
        raise DataError("templates is empty; pass prompt templates such as 'an H&E image of {}.'")
    bad = [t for t in out if "{}" not in t]
    if bad:
        raise DataError(f"prompt template {bad[0]!r} has no '{{}}' where the class name goes")
    return out


def _column_keys(key_added: str, classes: Sequence[str]) -> list[str]:
    keys = [K.class_key(key_added, c) for c in classes]
    for c, k in zip(classes, keys, strict=True):
        if k == f"{key_added}_":
            raise DataError(f"class name {c!r} has no letters or digits to name a column after")
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise DataError(
            f"class names map to the same column {sorted(dup)[0]!r}; make them differ in "
            "letters or digits (case and punctuation are dropped)"
        )
    return keys


def _text_encoder(encoder: Any, weights: str | None = None, device: str | None = None):
    """The encoder (a name is built through the registry); it must have a text tower."""
    from mmpath.tl.embed import resolve_encoder

    enc = resolve_encoder(encoder, weights=weights, device=device)
    if not enc.info.has_text:
        raise ModelError(
            f"encoder {enc.info.name!r} has no text tower; zero-shot needs an image-text model "
            "(e.g. conch, plip, tiny_clip)"
        )
    return enc


def _normalise(a: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.einsum("ij,ij->i", a, a))[:, None]
    return a / np.where(norm > 0, norm, 1).astype(a.dtype)


def class_embeddings(
    classes: Sequence[str] | Mapping[str, Sequence[str]],
    encoder: Any,
    *,
    templates: Sequence[str] | None = None,
) -> np.ndarray:
    """Template-ensembled, L2-normalised text embeddings of the classes, ``(n_classes, D)``.

    Each class's prompts (names x templates) are embedded and normalised, averaged, and the
    mean renormalised.

    Parameters
    ----------
    classes
        Class names, or a mapping from class to the names/synonyms to prompt it with.
    encoder
        A registry name or an encoder with a text tower.
    templates
        Prompt templates with ``{}`` for the name (default :data:`DEFAULT_TEMPLATES`).

    Returns
    -------
    ``float32`` array ``(n_classes, D)`` in the model's joint space.

    Example
    -------
    >>> W = class_embeddings(["tumor", "stroma"], "conch")
    """
    from mmpath.tl.text import embed_text

    enc = _text_encoder(encoder)
    prompts = _class_prompts(classes)
    tmpl = _check_templates(templates)
    texts, owner = [], []
    for j, names in enumerate(prompts.values()):
        for name in names:
            for t in tmpl:
                texts.append(t.replace("{}", name))
                owner.append(j)
    emb = _normalise(np.asarray(embed_text(texts, enc), dtype=np.float64))
    owner = np.asarray(owner)
    means = np.stack([emb[owner == j].mean(axis=0) for j in range(len(prompts))])
    return _normalise(means).astype(np.float32)


def far_classes(encoder, names: Sequence[str]) -> list[dict[str, Any]]:
    """Class names far from the phrases ``encoder`` was trained on (rule in the module notes),
    each as ``{"name", "cosine", "threshold", "nearest"}``, with a warning; ``[]`` when the
    encoder declares no training vocabulary.

    Example
    -------
    >>> [f["name"] for f in far_classes(enc, ["dense nuclei", "necrosis"])]  # doctest: +SKIP
    ['necrosis']
    """
    from mmpath.models.caveats import vocabulary
    from mmpath.tl.text import embed_text

    vocab = list(vocabulary(encoder))
    if len(vocab) < 2 or not names:
        return []
    v = _normalise(embed_text(vocab, encoder).astype(np.float64))
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    threshold = float(sim.max(axis=1).min())
    q = _normalise(embed_text([str(n) for n in names], encoder).astype(np.float64)) @ v.T
    out = []
    for i, name in enumerate(names):
        j = int(q[i].argmax())
        if q[i, j] < threshold:
            out.append(
                {
                    "name": str(name),
                    "cosine": float(q[i, j]),
                    "threshold": threshold,
                    "nearest": vocab[j],
                }
            )
    if out:
        log.warning(
            "%s: %s far from anything it was trained on (best cosine to its training phrases "
            "%s < %.2f, the lowest among those phrases); its calls on %s are unsupported",
            encoder.info.name,
            ", ".join(repr(f["name"]) for f in out),
            ", ".join(f"{f['cosine']:.2f} ({f['nearest']!r})" for f in out),
            threshold,
            "them" if len(out) > 1 else "it",
        )
    return out


def _logit_scale(encoder) -> tuple[float, str]:
    """The encoder's own scale (its contract: ``Encoder.learned_logit_scale``), capped."""
    value = encoder.learned_logit_scale()
    if value is None:
        return DEFAULT_LOGIT_SCALE, "default"
    return min(value, MAX_LOGIT_SCALE), "model"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _top_k_pool(logits: np.ndarray, codes: np.ndarray, n_slides: int, k: int) -> np.ndarray:
    """Per slide and class, the mean of the ``k`` largest tile logits (MI-Zero).

    ``codes`` numbers each row's slide ``0..n_slides-1`` (other values are left out); a
    slide without rows gets NaN.
    """
    pooled = np.full((n_slides, logits.shape[1]), np.nan)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_slides + 1))
    for i in range(n_slides):
        rows = logits[order[bounds[i] : bounds[i + 1]]]
        if len(rows) == 0:  # every tile of the slide was damaged
            continue
        kk = min(k, len(rows))
        top = np.partition(rows, len(rows) - kk, axis=0)[len(rows) - kk :]
        pooled[i] = np.sort(top, axis=0).mean(axis=0)  # sorted: the same sum order every run
    return pooled


def zero_shot(
    adata,
    classes: Sequence[str] | Mapping[str, Sequence[str]],
    encoder: Any,
    *,
    templates: Sequence[str] | None = None,
    use_rep: str | None = None,
    key_added: str = K.ZS,
    top_k: int = 10,
    logit_scale: float | None = None,
    slide=None,
    weights: str | None = None,
    device: str | None = None,
) -> AnnData:
    """Zero-shot classify tiles (in place) and slides (returned) from class names.

    Parameters
    ----------
    adata
        A tile table (one slide or a cohort).
    classes
        Class names (``["tumor", "stroma"]``), or a mapping from class to the names/synonyms
        to prompt it with (``{"tumor": ["tumor", "carcinoma"]}``). At least two.
    encoder
        An image-text encoder: a registry name (``"conch"``, ``"plip"``, ``"tiny_clip"``) or
        one made by :func:`mmpath.models.create_encoder`.
    templates
        Prompt templates with ``{}`` where the class name goes; default
        :data:`DEFAULT_TEMPLATES` (CONCH-style pathology prompts), ensembled per class.
    use_rep
        obsm key of normalised joint-space image vectors; default ``X_<slug>_proj``, computed
        with :func:`mmpath.tl.embed` when missing.
    key_added
        Prefix of the outputs: ``obs[key_added]`` (label) and ``obs[key_added_<class>]``.
    top_k
        Tiles per slide whose logits are averaged per class for the slide call (fewer tiles:
        all of them).
    logit_scale
        Override of the model's temperature (see the module notes).
    slide
        Open slide to read pixels from when embedding is needed (reopened from provenance
        when ``None``).
    weights
        Weights for an encoder given by name (a file or model folder).
    device
        Torch device for the encoder (default: where it is, or CUDA when available).

    Returns
    -------
    A slide table (AnnData, one row per ``slide_id``): ``X`` the slide probabilities
    (``var_names`` are the classes, ``var["key"]`` the tile columns), ``layers["logits"]`` the
    pooled logits, ``obs[key_added]`` the slide label, ``obs["n_tiles"]``; ``uns["mmpath"]``
    holds the slides' provenance and the run's parameters.

    The tile table gains ``obs[key_added_<class>]`` (probabilities; class names lowercased,
    non-alphanumerics to ``_``), ``obs[key_added]`` (categorical argmax) and the run's
    parameters in ``uns["mmpath"]["runs"][key_added]``. Tiles marked damaged
    (``obs["tile_ok"]`` False) get NaN and no label, and do not vote for their slide.

    Example
    -------
    >>> slides = mm.tl.zero_shot(tiles, ["tumor", "stroma", "necrosis"], "conch")
    >>> mm.pl.tiles(tiles, slide, color="zs_tumor")
    """
    import anndata as ad

    prompts = _class_prompts(classes)
    names = list(prompts)
    columns = _column_keys(key_added, names)
    tmpl = _check_templates(templates)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise DataError(f"top_k must be a positive integer, got {top_k!r}")
    if logit_scale is not None and not logit_scale > 0:
        raise DataError(f"logit_scale must be positive, got {logit_scale!r}")
    if adata.n_obs == 0:
        raise DataError("the tile table is empty; nothing to classify")
    if K.SLIDE_ID not in adata.obs:
        _prov.slide_ids(adata)  # raises the standard error for a table without slide ids
    codes, uniques = pd.factorize(adata.obs[K.SLIDE_ID])  # slides in order of appearance
    if (codes < 0).any():
        raise DataError("obs['slide_id'] has missing values; every tile needs its slide id")
    order = [str(u) for u in uniques]

    enc = _text_encoder(encoder, weights, device)
    slug = enc.info.slug or K.slugify(enc.info.name)
    rep = use_rep or K.rep_key(slug, proj=True)
    if rep not in adata.obsm:
        if use_rep is not None or not enc.info.has_image:
            have = ", ".join(map(str, adata.obsm.keys())) or "none"
            raise DataError(
                f"no obsm[{rep!r}] in the table (obsm keys: {have}); run "
                "mm.tl.embed(adata, encoder=...) first or pass an existing use_rep="
            )
        from mmpath.tl.embed import embed

        log.info("embedding %d tiles with %s for zero-shot", adata.n_obs, enc.info.name)
        embed(adata, enc, slide=slide, device=device)
        if rep not in adata.obsm:
            raise DataError(f"mm.tl.embed did not write obsm[{rep!r}]; pass use_rep=")
    img = np.asarray(adata.obsm[rep], dtype=np.float32)  # float32: cosines need no more
    text = class_embeddings(prompts, enc, templates=tmpl).astype(np.float64)
    if img.ndim != 2 or img.shape[1] != text.shape[1]:
        raise DataError(
            f"obsm[{rep!r}] has shape {img.shape} but {enc.info.name!r} embeds text in "
            f"{text.shape[1]} dims; use the joint-space vectors of the same model (X_<slug>_proj)"
        )
    if not np.isfinite(img).all():
        raise DataError(f"obsm[{rep!r}] contains NaN or infinite values; re-embed the tiles")
    far = far_classes(enc, names)
    scale, scale_source = (
        (float(logit_scale), "argument") if logit_scale is not None else _logit_scale(enc)
    )
    logits = scale * (_normalise(img) @ text.T.astype(np.float32)).astype(np.float64)
    proba = _softmax(logits)
    # Tiles whose pixels could not be read were embedded as white fills: no score, no vote.
    ok = adata.obs[K.TILE_OK].to_numpy(bool) if K.TILE_OK in adata.obs else None
    label_codes = proba.argmax(axis=1)
    if ok is not None and not ok.all():
        proba[~ok] = np.nan
        label_codes = np.where(ok, label_codes, -1)
        log.warning("%d damaged tile(s) get no zero-shot score", int((~ok).sum()))
    previous = _prov.run_record(adata, "zero_shot", key_added)
    if previous:  # a re-run replaces the previous run's columns, stale ones too
        old = previous.get("columns", [])
        adata.obs.drop(columns=[c for c in old if c in adata.obs], inplace=True)
    for j, col in enumerate(columns):
        adata.obs[col] = proba[:, j].astype(np.float32)
    adata.obs[key_added] = pd.Categorical.from_codes(label_codes, categories=names)

    record = {
        "step": "zero_shot",
        "encoder": enc.info.name,
        "use_rep": rep,
        "classes": names,
        "class_prompts": prompts,
        "columns": columns,
        "templates": tmpl,
        "logit_scale": scale,
        "logit_scale_source": scale_source,
        "top_k": int(top_k),
        "version": __version__,
    }
    from mmpath.models.caveats import caveat

    if caveat(enc):
        record["caveat"] = caveat(enc)
    if far:
        record["far_classes"] = {f["name"]: f for f in far}
    _prov.record_run(adata, "zero_shot", key_added, record)

    pool_codes = codes if ok is None else np.where(ok, codes, len(order))  # drop damaged
    pooled = _top_k_pool(logits, pool_codes, len(order), int(top_k))
    n_tiles = np.bincount(pool_codes, minlength=len(order))[: len(order)]
    slide_proba = np.full_like(pooled, np.nan)
    has = n_tiles > 0
    slide_proba[has] = _softmax(pooled[has])
    slide_codes = np.where(has, np.nan_to_num(slide_proba, nan=-1.0).argmax(axis=1), -1)
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical(order, categories=order),
            K.N_TILES: np.asarray(n_tiles, dtype=np.int64),
            key_added: pd.Categorical.from_codes(slide_codes, categories=names),
        },
        index=pd.Index(order, name=None),
    )
    var = pd.DataFrame({"key": columns}, index=pd.Index(names))
    table = ad.AnnData(
        X=slide_proba.astype(np.float32),
        obs=obs,
        var=var,
        layers={K.LOGITS: pooled.astype(np.float32)},
    )
    known = _prov.plain(_prov.root(adata)[K.UNS_SLIDES])
    _prov.new_root(
        table, {s: known[s] for s in order if s in known}, "zero_shot", key_added, record
    )
    log.info(
        "zero-shot %s: %d tiles, %d slide(s), %d classes x %d templates (logit scale %.3g)",
        enc.info.name,
        adata.n_obs,
        len(order),
        len(names),
        len(tmpl),
        scale,
    )
    return table
