"""``TileIndex``: a faiss index over tile embeddings, with the tiles' metadata and provenance.

Similarity is cosine: every stored and query vector is L2-normalised and searched by inner
product, so ``score`` is the cosine similarity in [-1, 1]. This module holds the index itself
(vectors, filters, changes, persistence); the hit-table queries (``search``, ``search_image``,
``search_text``, ``search_slides``) are in :mod:`mmpath.index._queries`, mixed in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import IndexError_
from mmpath.index import _center
from mmpath.index import _faiss as F
from mmpath.index import _results as R
from mmpath.index import _tables as T
from mmpath.index._meta import MetaStore
from mmpath.index._queries import TileQueries

log = logging.getLogger(__name__)

__all__ = ["TileIndex"]


class TileIndex(TileQueries):
    """A faiss index over tile embeddings plus the tiles' metadata.

    Made by :func:`mmpath.index.build` or :func:`mmpath.index.load`. faiss returns 64-bit tile
    ids; ``idx.metadata.loc[ids]`` gives their slide, coordinates and labels. Ids are stable:
    adding tables hands out new ones, removing slides never renumbers the rest.

    Example
    -------
    >>> idx = mm.index.build(tiles, use_rep="X_uni")
    >>> hits = idx.search_image(query_tiles, k=10, drop_neighbours=1000)
    >>> idx.save("archive.idx")
    """

    def __init__(
        self,
        index,
        metadata,
        manifest: dict[str, Any],
        *,
        gpu: bool | None = None,
        parts=None,
    ) -> None:
        self.index = index
        self._meta = metadata if isinstance(metadata, MetaStore) else MetaStore.from_frame(metadata)
        self._parts = parts  # on-disk segments (mmpath.index._ondisk.Parts) or None
        self.manifest = manifest
        self._gpu_flag = gpu
        F.apply_params(index, self.params)
        self._gpu = F.to_gpu(index, gpu)
        self._id_map: np.ndarray | None = None
        self._slide_meta: pd.DataFrame | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> str | None:
        return self.manifest.get("encoder")

    @property
    def embedding_key(self) -> str:
        return str(self.manifest["embedding_key"])

    @property
    def factory(self) -> str:
        return str(self.manifest["factory"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.manifest.get("params", {}))

    @property
    def slide_ids(self) -> list[str]:
        return self._meta.slide_ids()

    @property
    def metadata(self) -> pd.DataFrame:
        """Every tile's metadata, indexed by tile id.

        An index loaded from disk keeps only tile id, slide, x and y in memory (see
        :mod:`mmpath.index._meta`); this reads the rest of the file once, so at archive scale
        prefer the search results (which carry the hits' metadata) and :attr:`columns`.
        """
        frame = self._meta.frame()
        self._meta = MetaStore.from_frame(frame) if self._meta._frame is None else self._meta
        return frame

    @property
    def columns(self) -> list[str]:
        """The metadata column names (usable in ``where=`` filters)."""
        return list(self._meta.columns)

    @property
    def on_disk(self) -> bool:
        """True when the inverted lists live in ``.ivfdata`` files, memory-mapped."""
        return self._parts is not None

    def __len__(self) -> int:
        """Live tiles (an on-disk index's removed tiles, still in its lists, not counted)."""
        dead = len(self._parts.removed) if self._parts is not None else 0
        return int(self.index.ntotal) - dead

    def __repr__(self) -> str:
        return (
            f"TileIndex({len(self)} tiles, {len(self.slide_ids)} slides, "
            f"{self.embedding_key} dim {self.dim}, {self.factory!r}, "
            f"encoder {self.encoder!r}{', on disk' if self._parts is not None else ''}"
            f"{', gpu' if self._gpu is not None else ''})"
        )

    def set_params(self, **params: Any) -> None:
        """Change the default query-time parameters (``nprobe=``, ``efSearch=``, ``k_factor=``).

        Example
        -------
        >>> idx.set_params(nprobe=64)
        """
        self.manifest["params"] = {**self.params, **F.check_params(params)}
        F.apply_params(self.index, self.params)
        if self._gpu is not None:
            F.apply_params(self._gpu, self.params)

    # -- vectors ----------------------------------------------------------------------------

    def check_encoder(self, name: str | None) -> None:
        """Refuse a query embedded by a different encoder than the index's."""
        if name is None or self.encoder is None:
            return
        if K.slugify(name) != K.slugify(self.encoder):
            raise IndexError_(
                f"the query comes from encoder {name!r} but the index holds {self.encoder!r} "
                f"embeddings ({self.embedding_key}); embed the query with {self.encoder!r}"
            )

    def search_vectors(
        self,
        q,
        k: int = 10,
        *,
        where: str | None = None,
        params: Mapping[str, Any] | None = None,
        encoder: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest tiles of query vectors: the raw faiss contract, for speed.

        Parameters
        ----------
        q
            ``(n, dim)`` or ``(dim,)`` query vectors in the index's space (normalised here).
        k
            Neighbours per query.
        where
            A filter on the metadata (``"organ == 'colon' and tissue_frac > 0.5"``): column
            names, literals, comparisons, ``in``/``not in`` lists, ``and``/``or``/``not`` and
            ``isna()``/``notna()`` (see :func:`mmpath.index.filter_mask`); only matching tiles
            are returned. Anything else is refused, nothing is evaluated as Python.
        params
            Query-time parameters for this call (``nprobe``, ``efSearch``, ``k_factor``).
        encoder
            The encoder that made ``q``; refused when it is not the index's.

        Returns
        -------
        ``(D, I)``: ``float32 (n, k)`` cosine similarities (best first) and ``int64 (n, k)``
        tile ids (``-1`` where fewer than ``k`` tiles match a filter).

        Example
        -------
        >>> D, I = idx.search_vectors(tiles.obsm["X_uni"][:5], k=20)
        >>> idx.metadata.loc[I[0]]
        """
        if encoder is not None:
            self.check_encoder(encoder)
        x = _center.apply(T.prepare(q, self.dim), self.manifest.get("center"))
        self._check_k(k)
        dead = self._parts.removed if self._parts is not None else None
        if where is None and not params and (dead is None or not len(dead)):
            # the hot path: defaults are set on the index
            return (self.index if self._gpu is None else self._gpu).search(x, int(k))
        p = {**self.params, **F.check_params(params)}
        selector = None
        if where is not None:  # filter ids are live ids: removed tiles are never among them
            selector = F.Selector(self.filter_ids(where))
            if self._id_map is None:
                self._id_map = F.id_map_of(self.index)
        elif dead is not None and len(dead):  # tombstones, skipped inside faiss' list scan
            selector = F.Selector(None, excluded=self._parts.dead_bitmap())
        index = self._gpu if (self._gpu is not None and selector is None) else self.index
        sp, _keep = F.search_params(index, p, selector, self._id_map)
        return index.search(x, int(k), params=sp)

    def filter_ids(self, where: str) -> np.ndarray:
        """Tile ids whose metadata match a filter (the safe language of :func:`filter_mask`).

        The filter is parsed and evaluated by :mod:`mmpath.index._filter`, never by
        ``DataFrame.query``, so a filter from a browser or a command line cannot run code.
        """
        return self._meta.filter_ids(where)

    def _check_k(self, k: int) -> None:
        n = len(self)
        if n == 0:
            raise IndexError_("the index is empty; add tables with idx.add(...)")
        if int(k) < 1:
            raise IndexError_(f"k must be >= 1, got {k}")
        if int(k) > n:
            raise IndexError_(f"k={k} exceeds the {n} tiles in the index; ask for k <= {n}")

    # -- changing the index ------------------------------------------------------------------

    def add(self, adata) -> int:
        """Add the tiles of more tile tables (same encoder and key), without a rebuild.

        Parameters
        ----------
        adata
            A tile table, a list of them, a list of ``.h5ad`` paths or an archive view
            (anything with ``table_paths()``); files are read one at a time. New slides
            only: a slide already in the index, another encoder or another dim is refused
            before anything is added. IVF indexes add with their trained quantizer; an
            on-disk index gets a new segment (written by :meth:`save`), the existing
            ``.ivfdata`` files are never rewritten.

        Returns
        -------
        The number of tiles added.

        Example
        -------
        >>> idx.add(["new/S42.h5ad", "new/S43.h5ad"])
        """
        from mmpath.index._change import add

        return add(self, adata)

    def remove(self, slides: str | Sequence[str], *, compact: bool = False) -> int:
        """Remove every tile of the given slides (ids of the other tiles are unchanged).

        An in-memory index drops their vectors. An on-disk index never rewrites its
        ``.ivfdata`` lists: the removed ids become tombstones that every search skips
        (results equal an index built without those slides); a segment left with no live
        tile is dropped whole. :meth:`save` writes the change atomically.

        Parameters
        ----------
        slides
            Slide ids (none, with ``compact=True``, to compact earlier removals only).
        compact
            On disk: at the next :meth:`save`, rewrite the segments holding removed tiles
            without them (streamed, a bounded block at a time), so they stop costing scan
            time; without it a removal writes only the tombstones.

        Returns
        -------
        The number of tiles removed.

        Example
        -------
        >>> idx.remove(["S1", "S2"])
        """
        from mmpath.index._change import remove

        return remove(self, slides, compact=compact)

    def _changed(self) -> None:
        self._id_map = None
        self._slide_meta = None
        if self._gpu is not None:
            self._gpu = F.to_gpu(self.index, self._gpu_flag)

    # -- tiles and persistence ----------------------------------------------------------------

    def tiles(self, hits) -> Any:
        """A tile table (AnnData, with slide provenance) of the hit tiles, for reading pixels.

        ``hits`` is a hits DataFrame or an array of tile ids.

        Example
        -------
        >>> px = mm.io.read_tiles(None, idx.tiles(hits))
        """
        return R.tiles_table(self, hits)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index atomically to a directory (index, metadata parquet, manifest).

        Example
        -------
        >>> idx.save("archive.idx")
        """
        from mmpath.index._store import load, save

        out = save(self, path)
        if self._parts is not None or self._meta._frame is None:
            # the files this index reads from may have been replaced: read the saved ones
            back = load(out, verify=False, gpu=False)
            self.index, self._parts, self._meta = back.index, back._parts, back._meta
            F.apply_params(self.index, self.params)
            self._changed()
        return out
