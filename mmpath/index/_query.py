"""Queries to vectors: images (files, arrays, tile rows) through the image tower, texts through
the text tower. Torch is imported only when something must be embedded.

Images are preprocessed exactly as ``tl.embed`` preprocesses tiles (the encoder's
``DataConfig``: magnification, input size, mean/std); a non-square image is centre-cropped
to a square first.

Scale of image queries. A query whose µm/px is not given is taken to be at the index's tiling
mpp (``mpp_effective`` of the indexed slides, from the manifest), and one log line says so:
an exact crop of an indexed tile then reaches the model exactly as the tile did. A query
larger than the indexed tiles' field of view (``size`` px at the tiling mpp) is centre-cropped
to it, with a note: the index's vectors describe one tile's field, so a larger query would be
compared with a different amount of tissue (tile a large region with ``mm.pp.tile`` and search
by its rows to query all of it). A smaller query is used as it is, with a note that its scores
are lower than a whole tile's. Without an mpp on either side the image is resized to the
encoder's input, and a line says the magnification is unknown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError, IndexError_, ModelError
from mmpath.index import _tables as T

log = logging.getLogger(__name__)


def resolve_encoder(idx, encoder):
    """The Encoder for queries: the one given (name or instance) or the index's, by name."""
    from mmpath.tl.embed import resolve_encoder as _resolve

    if encoder is None:
        if not idx.encoder:
            raise IndexError_(
                "the index does not record its encoder; pass encoder= (the model that "
                f"embedded {idx.embedding_key})"
            )
        encoder = idx.encoder
    enc = _resolve(encoder)
    idx.check_encoder(enc.info.name)
    return enc


def _is_proj(idx) -> bool:
    return idx.embedding_key.endswith(K.PROJ_SUFFIX)


def text_vectors(idx, texts: Sequence[str], *, encoder=None) -> tuple[np.ndarray, str]:
    """Normalised joint-space vectors of ``texts`` and the encoder's name."""
    if not _is_proj(idx):
        raise IndexError_(
            f"the index holds {idx.embedding_key} (image features), not a joint image-text "
            f"space; for text search build it with use_rep='{idx.embedding_key}{K.PROJ_SUFFIX}'"
        )
    if not texts or any(not str(t).strip() for t in texts):
        raise IndexError_("a query text is empty; describe what to find, e.g. 'necrosis'")
    enc = resolve_encoder(idx, encoder)
    if not enc.info.has_text:
        raise ModelError(f"encoder {enc.info.name!r} has no text tower")
    return T.prepare(embed_texts(texts, enc), idx.dim), enc.info.name


def embed_texts(texts: Sequence[str], enc) -> np.ndarray:
    """Text-tower embeddings (the one place that calls the text tower; easy to swap)."""
    from mmpath.tl import embed_text

    return embed_text(list(texts), enc)


def image_vectors(
    idx, images, *, encoder=None, mpp: float | None = None, batch_size: int = 64
) -> tuple[np.ndarray, pd.DataFrame | None, str | None]:
    """Normalised vectors of image queries, where tile queries lie, and the encoder's name."""
    if hasattr(images, "obsm"):
        return _table_vectors(idx, images, encoder)
    arrays = _load_images(images)
    if not arrays:
        raise IndexError_("no query image given")
    enc = resolve_encoder(idx, encoder)
    arrays, mpp = fit_to_index(idx, arrays, mpp)
    x = encode_images(arrays, enc, proj=_is_proj(idx), mpp=mpp, batch_size=batch_size)
    return T.prepare(x, idx.dim), None, enc.info.name


def index_tiling(idx) -> tuple[float | None, int | None]:
    """The index's tiling ``(mpp, size)``: the most common ``mpp_effective`` and tile size
    over its slides (the manifest's slide records), ``None`` where unknown."""
    mpps: dict[float, int] = {}
    sizes: dict[int, int] = {}
    for rec in (idx.manifest.get("slides") or {}).values():
        tiling = (rec or {}).get(K.UNS_TILING) or {}
        m = tiling.get("mpp_effective") or tiling.get("mpp") or (rec or {}).get("mpp")
        if m:
            key = round(float(m), 4)
            mpps[key] = mpps.get(key, 0) + 1
        if tiling.get("size"):
            sizes[int(tiling["size"])] = sizes.get(int(tiling["size"]), 0) + 1
    if not mpps and T.MPP in getattr(idx, "metadata", {}):
        col = pd.to_numeric(idx.metadata[T.MPP], errors="coerce").dropna().round(4)
        mpps = {float(k): int(v) for k, v in col.value_counts().items()}
    mpp = max(mpps, key=mpps.get) if mpps else None
    if len(mpps) > 1:
        log.warning(
            "the index holds tiles at %d magnifications (%s µm/px); queries are matched to "
            "the most common, %.3g µm/px",
            len(mpps),
            ", ".join(f"{m:g}" for m in sorted(mpps)),
            mpp,
        )
    size = max(sizes, key=sizes.get) if sizes else None
    return mpp, size


def fit_to_index(
    idx, arrays: list[np.ndarray], mpp: float | None
) -> tuple[list[np.ndarray], float | None]:
    """Query images at the index's scale: the assumed mpp (the index's when ``mpp`` is None)
    and each image centre-cropped to the indexed tiles' field of view when larger."""
    tile_mpp, tile_size = index_tiling(idx)
    if mpp is None:
        if tile_mpp is None:
            log.info(
                "query mpp unknown and the index records none: query images are resized to "
                "the encoder's input (pass mpp=/--mpp if you know it)"
            )
            return arrays, None
        mpp = tile_mpp
        log.info(
            "query images assumed at the index's tiling scale, %.3g µm/px%s (pass mpp=/--mpp "
            "otherwise)",
            mpp,
            f", {tile_size} px tiles" if tile_size else "",
        )
    if not tile_size:
        return arrays, mpp
    field = max(1, round(tile_size * tile_mpp / mpp)) if tile_mpp else tile_size
    out = []
    cropped = small = 0
    for a in arrays:
        side = min(a.shape[:2])
        if side > field * (1 + _SIZE_TOLERANCE):
            a = _centre(a, field)
            cropped += 1
        elif side < field * (1 - _SIZE_TOLERANCE):
            small += 1
        out.append(a)
    if cropped:
        log.info(
            "%d query image(s) larger than an indexed tile's field (%d px at %.3g µm/px): "
            "centre-cropped to it (tile a large region with mm.pp.tile to search all of it)",
            cropped,
            field,
            mpp,
        )
    if small:
        log.info(
            "%d query image(s) smaller than an indexed tile's field (%d px at %.3g µm/px): "
            "scores are lower than for a whole tile",
            small,
            field,
            mpp,
        )
    return out, mpp


_SIZE_TOLERANCE = 0.02


def _centre(a: np.ndarray, side: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(a[top : top + side, left : left + side])


def _table_vectors(idx, table, encoder):
    key = idx.embedding_key
    where = None
    if K.SLIDE_ID in table.obs and K.X in table.obs and K.Y in table.obs:
        where = table.obs[[K.SLIDE_ID, K.X, K.Y]].reset_index(drop=True)
    if table.n_obs == 0:
        raise IndexError_("the query table has no rows")
    if key in table.obsm:
        name = T.embedding_record(table, key).get("encoder")
        return T.prepare(table.obsm[key], idx.dim), where, name
    from mmpath.tl import embed

    enc = resolve_encoder(idx, encoder)
    base = key[: -len(K.PROJ_SUFFIX)] if _is_proj(idx) else key
    copy = table.copy()
    embed(copy, enc, key_added=base, num_workers=0)
    if key not in copy.obsm:
        raise ModelError(f"encoder {enc.info.name!r} does not produce {key} (no joint space)")
    return T.prepare(copy.obsm[key], idx.dim), where, enc.info.name


def _load_images(images) -> list[np.ndarray]:
    """Query images as uint8 ``(H, W, 3)`` arrays."""
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        images = [images]
    elif isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = [images]
        elif images.ndim != 4:
            raise DataError(f"an image array must be (H, W, 3) or (n, H, W, 3), got {images.shape}")
    out = []
    for im in images:
        if isinstance(im, (str, os.PathLike)):
            out.append(_read_file(Path(im)))
        elif _is_pil(im):
            alpha = "A" in im.mode or "transparency" in im.info
            out.append(_as_rgb(np.asarray(im.convert("RGBA" if alpha else "RGB"))))
        else:
            out.append(_as_rgb(np.asarray(im)))
    return out


def _is_pil(obj) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image.Image)


def _read_file(path: Path) -> np.ndarray:
    """A query image as a viewer shows it (EXIF orientation, 16-bit, transparency on white),
    read exactly as :func:`mmpath.io.open_slide` reads plain images."""
    from mmpath.errors import SlideError
    from mmpath.io._plain import read_plain_image, read_plain_tiff

    if path.is_dir():
        raise DataError(f"query image {str(path)!r} is a directory; pass image files")
    if not path.is_file():
        raise DataError(f"query image {str(path)!r} does not exist")
    tiff = path.suffix.lower() in (".tif", ".tiff")
    try:
        return _as_rgb(read_plain_tiff(path) if tiff else read_plain_image(path))
    except SlideError as err:  # the message names the file and the problem already
        raise DataError(str(err)) from None


def _as_rgb(a: np.ndarray) -> np.ndarray:
    from mmpath.io._plain import to_uint8
    from mmpath.io.slide import _rgba_to_rgb

    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise DataError(f"a query image must be (H, W, 3), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"a query image is empty (shape {a.shape}); pass a non-empty image")
    a = to_uint8(a)  # uint16 over its range, floats in 0..1 by 255
    return _rgba_to_rgb(a) if a.shape[2] == 4 else a


def _square(a: np.ndarray) -> np.ndarray:
    return _centre(a, min(a.shape[:2]))


def encode_images(
    arrays: list[np.ndarray], enc, *, proj: bool, mpp: float | None = None, batch_size: int = 64
) -> np.ndarray:
    """Embed uint8 images with ``enc``'s image tower (``proj``: the joint space)."""
    import torch

    from mmpath.tl._embed_data import plan_preprocess

    if not enc.info.has_image:
        raise ModelError(f"encoder {enc.info.name!r} has no image tower")
    enc.eval()
    param = next(iter(enc.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    out = []
    with torch.inference_mode():
        for s in range(0, len(arrays), batch_size):
            batch = []
            for a in arrays[s : s + batch_size]:
                a = _square(a)
                batch.append(plan_preprocess(a.shape[0], mpp, enc.info.data)(a))
            emb = enc.encode_image(torch.stack(batch).to(device))
            vec = emb.proj if proj else emb.features
            if vec is None:
                raise ModelError(f"encoder {enc.info.name!r} has no joint image-text space")
            out.append(vec.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
