"""What the web app serves: a loaded :class:`~mmpath.index.TileIndex`, its encoder, and its
slides reopened from provenance, behind caches.

Only the public index API is called (``search_text``, ``search_image``, ``search_slides``,
``tiles``, ``metadata``, ``manifest``), so on-disk or sharded indexes with the same API work
unchanged. Slides are named by slide id only; their paths come from the index's provenance
(through ``remap``), never from a request.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError, IndexError_, MmpathError, ModelError, SlideError
from mmpath.serve._deepzoom import DeepZoom, encode_jpeg

log = logging.getLogger(__name__)

#: Limits a request cannot exceed.
MAX_TEXT = 500
MAX_K = 200
THUMB_PX = 160
#: Cache sizes (entries): deep-zoom tiles (~15 kB each), hit thumbnails, open slides.
DZ_CACHE = 4096
THUMB_CACHE = 4096
#: Seconds before a slide that failed to open is tried again.
RETRY_S = 30.0
TILE_ID = "tile_id"


class NotFound(DataError):
    """A slide id or tile id that the index does not hold (an HTTP 404)."""


class Unavailable(SlideError):
    """A slide recorded in the index cannot be read now (moved, unreadable: an HTTP 503)."""


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    # pandas' JSON writer turns numpy scalars, categories and NaN into plain JSON
    return json.loads(df.to_json(orient="records", double_precision=6))


class Archive:
    """A tile index plus everything the page needs to show its hits.

    Parameters
    ----------
    idx
        A loaded :class:`~mmpath.index.TileIndex`.
    encoder
        An Encoder (loaded once, here) or ``None`` to browse without queries that need one.
    remap
        ``{old_prefix: new_prefix}`` for slides that moved since they were indexed.
    """

    def __init__(self, idx, encoder=None, *, remap=None) -> None:
        self.idx = idx
        self.encoder = encoder
        self.remap = remap
        self._slides: dict[str, Any] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._dz: dict[str, DeepZoom] = {}
        self._open_lock = threading.Lock()
        self._read_locks: dict[str, threading.Lock] = {}
        self._encode_lock = threading.Lock()  # one forward pass at a time: torch uses all cores
        self.dz_tile = functools.lru_cache(maxsize=DZ_CACHE)(self._dz_tile)
        self.thumbnail = functools.lru_cache(maxsize=THUMB_CACHE)(self._thumbnail)
        self.records: dict[str, dict] = {
            str(k): dict(v) for k, v in idx.manifest.get("slides", {}).items()
        }
        meta = idx.metadata
        self.n_tiles = meta[K.SLIDE_ID].astype(str).value_counts().to_dict()

    # -- capabilities --------------------------------------------------------------------------

    @property
    def text_reason(self) -> str | None:
        """Why text search is off, or ``None`` when it works."""
        if not self.idx.embedding_key.endswith(K.PROJ_SUFFIX):
            return (
                f"the index holds {self.idx.embedding_key} (image features), not a joint "
                "image-text space; build it with use_rep='X_<slug>_proj' for text search"
            )
        if self.encoder is None:
            return "no encoder is loaded; start the server with --encoder NAME"
        if not self.encoder.info.has_text:
            return f"encoder {self.encoder.info.name!r} has no text tower"
        return None

    def _require_encoder(self, what: str):
        if self.encoder is None:
            raise ModelError(f"{what} needs the index's encoder; start with --encoder NAME")
        return self.encoder

    def info(self) -> dict[str, Any]:
        """The index summary the page starts from (columns for filters, limits, switches)."""
        meta = self.idx.metadata
        cols = []
        for c in meta.columns:
            if c == "obs_name":
                continue
            s = meta[c]
            entry: dict[str, Any] = {"name": str(c)}
            if pd.api.types.is_bool_dtype(s):
                entry["kind"] = "bool"
                entry["values"] = sorted(bool(v) for v in pd.unique(s.dropna()))
            elif pd.api.types.is_numeric_dtype(s):
                entry["kind"] = "number"
                if len(s.dropna()):
                    entry["min"], entry["max"] = float(s.min()), float(s.max())
            else:
                entry["kind"] = "text"
                vals = pd.unique(s.dropna().astype(str))
                if len(vals) <= 100:
                    entry["values"] = sorted(str(v) for v in vals)
            cols.append(entry)
        from mmpath.index import FILTER_HELP

        return {
            "n_tiles": len(self.idx),
            "n_slides": len(self.records),
            "encoder": self.encoder.info.name if self.encoder is not None else None,
            "index_encoder": self.idx.encoder,
            "embedding_key": self.idx.embedding_key,
            "text_search": self.text_reason is None,
            "text_reason": self.text_reason,
            "image_search": self.encoder is not None,
            "columns": cols,
            "filter_help": FILTER_HELP,
            "limits": {"k": min(MAX_K, len(self.idx)), "text": MAX_TEXT},
            "slides": [self.slide_summary(s) for s in sorted(self.records)],
        }

    # -- queries -------------------------------------------------------------------------------

    def _k(self, k: int) -> int:
        k = int(k)
        top = min(MAX_K, len(self.idx))
        if not 1 <= k <= top:
            raise IndexError_(f"k must be between 1 and {top}, got {k}")
        return k

    def _text(self, text: str) -> str:
        text = str(text).strip()
        if not text:
            raise IndexError_("the query text is empty; describe what to find, e.g. 'necrosis'")
        if len(text) > MAX_TEXT:
            raise IndexError_(f"the query text has {len(text)} characters; the limit is {MAX_TEXT}")
        if self.text_reason:
            raise ModelError(f"text search is off: {self.text_reason}")
        return text

    def _check(self, where: str | None) -> None:
        """Refuse a bad filter before any encoding work (the same safe parser)."""
        if where is not None:
            from mmpath.index import check_filter

            check_filter(where, self.idx.metadata.columns)

    def search_text(self, text: str, k: int, where: str | None = None) -> list[dict]:
        """Hits of a text query."""
        text, k = self._text(text), self._k(k)
        self._check(where)
        with self._encode_lock:
            hits = self.idx.search_text(text, k, encoder=self.encoder, where=where)
        return self._hits(hits)

    def search_image(self, image, k: int, where=None, mpp: float | None = None) -> list[dict]:
        """Hits of an uploaded image (a PIL image)."""
        k = self._k(k)
        self._check(where)
        enc = self._require_encoder("image search")
        with self._encode_lock:
            hits = self.idx.search_image(image, k, encoder=enc, mpp=mpp, where=where)
        return self._hits(hits)

    def _tile_query(self, tile_id: int):
        """A one-row tile table of an indexed tile, embedded from its pixels (with remap)."""
        from mmpath import tl

        tile_id = int(tile_id)
        if tile_id not in self.idx.metadata.index:
            raise NotFound(f"tile {tile_id} is not in the index")
        enc = self._require_encoder("'more like this'")
        table = self.idx.tiles(np.asarray([tile_id]))
        key = self.idx.embedding_key
        base = key[: -len(K.PROJ_SUFFIX)] if key.endswith(K.PROJ_SUFFIX) else key
        sid = str(table.obs[K.SLIDE_ID].iloc[0])
        self.slide(sid)  # a clear 503 when the slide cannot be read
        with self._encode_lock:
            tl.embed(table, enc, key_added=base, num_workers=0, remap=self.remap)
        if K.TILE_OK in table.obs and not bool(table.obs[K.TILE_OK].iloc[0]):
            raise Unavailable(f"the pixels of tile {tile_id} on slide {sid!r} cannot be read")
        return table

    def search_tile(self, tile_id: int, k: int, where: str | None = None) -> list[dict]:
        """Hits most like an indexed tile ("more like this"), leaving the tile itself out."""
        k = self._k(k)
        self._check(where)
        table = self._tile_query(tile_id)
        hits = self.idx.search_image(table, k, where=where, drop_neighbours=0)
        return self._hits(hits)

    def search_slides(
        self,
        *,
        text: str | None = None,
        image=None,
        tile_id: int | None = None,
        k: int = 5,
        where: str | None = None,
    ) -> list[dict]:
        """Slides ranked by the existing majority-vote slide search for one query."""
        k = max(1, min(int(k), len(self.records)))
        self._check(where)
        tiles_k = min(len(self.idx), 50)
        if text is not None:
            from mmpath import tl

            text = self._text(text)
            with self._encode_lock:
                q = tl.embed_text([text], self.encoder)
            res = self.idx.search_slides(q, k, tiles_k=tiles_k, where=where)
        elif image is not None:
            enc = self._require_encoder("image search")
            with self._encode_lock:
                res = self.idx.search_slides([image], k, tiles_k=tiles_k, encoder=enc, where=where)
        elif tile_id is not None:
            table = self._tile_query(tile_id)
            res = self.idx.search_slides(
                table, k, tiles_k=tiles_k, where=where, exclude_query_slides=False
            )
        else:
            raise IndexError_("give a text, an image or a tile id")
        return _records(res)

    def _hits(self, hits: pd.DataFrame) -> list[dict]:
        out = _records(hits.drop(columns=["query"], errors="ignore"))
        for h in out:
            rec = self.records.get(str(h[K.SLIDE_ID]), {})
            h["size0"] = float(rec.get(K.UNS_TILING, {}).get("size0") or 0)
        return out

    # -- slides --------------------------------------------------------------------------------

    def _record(self, slide_id: str) -> dict:
        if slide_id not in self.records:
            raise NotFound(f"slide {slide_id!r} is not in the index")
        return self.records[slide_id]

    def slide(self, slide_id: str):
        """The open slide (reopened from provenance once), or :class:`Unavailable`."""
        self._record(slide_id)
        s = self._slides.get(slide_id)
        if s is not None:
            return s
        with self._open_lock:
            s = self._slides.get(slide_id)
            if s is not None:
                return s
            failed = self._failed.get(slide_id)
            if failed and time.monotonic() - failed[0] < RETRY_S:
                raise Unavailable(failed[1])
            try:
                s = self._open(slide_id)
            except MmpathError as err:
                msg = f"slide {slide_id!r} cannot be opened: {err}"
                if self.remap is None:
                    msg += "; if the archive moved, start the server with --remap OLD=NEW"
                self._failed[slide_id] = (time.monotonic(), msg)
                log.warning("%s", msg)
                raise Unavailable(msg) from None
            self._failed.pop(slide_id, None)
            self._slides[slide_id] = s
            self._read_locks[slide_id] = threading.Lock()
            return s

    def _open(self, slide_id: str):
        import anndata as ad

        from mmpath import io

        prov = ad.AnnData()
        prov.uns[K.UNS] = {K.UNS_SLIDES: {slide_id: self.records[slide_id]}}
        return io.open_slide_from(prov, slide_id, remap=self.remap)

    def slide_summary(self, slide_id: str) -> dict[str, Any]:
        """Provenance facts of a slide (no file is touched)."""
        rec = self._record(slide_id)
        tiling = rec.get(K.UNS_TILING, {})
        return {
            "slide_id": slide_id,
            "mpp": rec.get("mpp"),
            "dims": rec.get("dims"),
            "vendor": rec.get("vendor"),
            "n_tiles": int(self.n_tiles.get(slide_id, 0)),
            "tile_size0": tiling.get("size0"),
            "tile_mpp": tiling.get("mpp_effective"),
        }

    def slide_info(self, slide_id: str) -> dict[str, Any]:
        """:meth:`slide_summary` plus whether the slide opens now and its deep-zoom size."""
        out = self.slide_summary(slide_id)
        try:
            s = self.slide(slide_id)
        except Unavailable as err:
            out.update(readable=False, message=str(err))
            return out
        out.update(
            readable=True,
            message=None,
            dims=list(s.dimensions),
            mpp=s.mpp if s.mpp is not None else out["mpp"],
            levels=s.level_count,
        )
        return out

    def deepzoom(self, slide_id: str) -> DeepZoom:
        """The deep-zoom pyramid of a slide."""
        s = self.slide(slide_id)
        dz = self._dz.get(slide_id)
        if dz is None or dz.slide is not s:
            dz = self._dz[slide_id] = DeepZoom(s)
        return dz

    def _read(self, slide_id: str, fn):
        s = self.slide(slide_id)
        with self._read_locks[slide_id]:
            try:
                return fn(s)
            except MmpathError as err:
                raise Unavailable(f"slide {slide_id!r}: {err}") from None
            except OSError as err:  # the file vanished or broke after it was opened
                self._slides.pop(slide_id, None)
                raise Unavailable(f"slide {slide_id!r} cannot be read: {err}") from None

    def _dz_tile(self, slide_id: str, level: int, col: int, row: int) -> bytes:
        dz = self.deepzoom(slide_id)
        try:
            dz.tile_read(level, col, row)
        except SlideError as err:  # a bad address is a 404, before any read
            raise NotFound(str(err)) from None
        return self._read(slide_id, lambda s: dz.tile_jpeg(level, col, row))

    def _thumbnail(self, tile_id: int) -> bytes:
        meta = self.idx.metadata
        if tile_id not in meta.index:
            raise NotFound(f"tile {tile_id} is not in the index")
        row = meta.loc[tile_id]
        sid = str(row[K.SLIDE_ID])
        size0 = float(self._record(sid).get(K.UNS_TILING, {}).get("size0") or THUMB_PX)
        x, y = int(row[K.X]), int(row[K.Y])
        return self._read(sid, lambda s: encode_jpeg(_region(s, x, y, size0)))


def _region(slide, x: int, y: int, size0: float, out: int = THUMB_PX) -> np.ndarray:
    """A square region (level-0 ``size0`` at ``x, y``) as about ``out`` px, clipped to the slide."""
    from PIL import Image

    W, H = slide.dimensions
    ds_want = max(1.0, size0 / out)
    level = slide.best_level_for_downsample(ds_want)
    ds = slide.level_downsamples[level]
    x, y = max(0, min(x, W - 1)), max(0, min(y, H - 1))
    w0, h0 = min(size0, W - x), min(size0, H - y)
    w, h = max(1, int(w0 / ds)), max(1, int(h0 / ds))
    lw, lh = slide.level_dimensions[level]
    w, h = min(w, lw - int(x / ds)), min(h, lh - int(y / ds))
    img = Image.fromarray(slide.read_region((x, y), level, (max(1, w), max(1, h))))
    scale = out / max(size0 / ds, 1)
    if scale < 1:
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
            Image.Resampling.LANCZOS,
        )
    return np.asarray(img)
