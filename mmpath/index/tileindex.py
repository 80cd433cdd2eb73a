"""``TileIndex``: a faiss index over tile embeddings, with the tiles' metadata and provenance.

Similarity is cosine: every stored and query vector is L2-normalised and searched by inner
product, so ``score`` is the cosine similarity in [-1, 1].
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
from mmpath.index import _query as Q
from mmpath.index import _results as R
from mmpath.index import _tables as T
from mmpath.index._meta import MetaStore

log = logging.getLogger(__name__)

__all__ = ["TileIndex"]


class TileIndex:
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
            selector = F.Selector(None, excluded=dead)
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

    # -- DataFrame queries -------------------------------------------------------------------

    def search(
        self,
        q,
        k: int = 10,
        *,
        where: str | None = None,
        drop_neighbours: float | None = None,
        min_distance: float | None = None,
        query_tiles: pd.DataFrame | None = None,
        params: Mapping[str, Any] | None = None,
        encoder: str | None = None,
    ) -> pd.DataFrame:
        """Nearest tiles of query vectors as a table (one row per query and rank).

        Parameters
        ----------
        q, k, where, params, encoder
            As in :meth:`search_vectors`.
        drop_neighbours
            A radius in level-0 pixels: drop hits on the query tile's own slide within it of
            the query tile (needs ``query_tiles``). ``0`` drops only the query tile itself,
            ``float("inf")`` every tile of the query's slide.
        min_distance
            Level-0 pixels: drop a hit within this distance of a better hit on the same slide,
            so results are not a cluster of adjacent near-copies.
        query_tiles
            ``slide_id``, ``x``, ``y`` of each query (rows aligned with ``q``).

        Returns
        -------
        DataFrame with ``query, rank, score, tile_id`` and the metadata columns (``obs_name,
        slide_id, x, y, mpp`` and the tables' obs columns).

        Example
        -------
        >>> hits = idx.search(vectors, k=10, where="organ == 'colon'")
        """
        self._check_k(k)
        x = T.prepare(q, self.dim)
        n = len(self)
        dropping = drop_neighbours is not None or min_distance is not None
        fetch = min(n, 4 * int(k) + 16) if dropping else int(k)
        while True:
            D, nbr = self.search_vectors(x, fetch, where=where, params=params, encoder=encoder)
            if not dropping:
                return R.hits_frame(D, nbr, self._meta)
            keep, short = R.drop_neighbours(
                D, nbr, self._meta, query_tiles, drop_neighbours, min_distance, int(k)
            )
            if not short or fetch >= n:
                return R.hits_frame(D, nbr, self._meta, keep=keep)
            fetch = min(n, fetch * 4)

    def search_image(
        self,
        images,
        k: int = 10,
        *,
        encoder=None,
        mpp: float | None = None,
        where: str | None = None,
        drop_neighbours: float | None = None,
        min_distance: float | None = None,
        params: Mapping[str, Any] | None = None,
        batch_size: int = 64,
    ) -> pd.DataFrame:
        """Tiles that look like the query images.

        Parameters
        ----------
        images
            An image file path, an ``(H, W, 3)`` uint8 array or a PIL image, a list of those,
            an ``(n, H, W, 3)`` batch, or rows of a tile table (their ``obsm[use_rep]`` is used
            when present, otherwise their pixels are read and embedded).
        k
            Hits per query image.
        encoder
            A registry name or an Encoder; needed when pixels must be embedded (defaults to
            the index's encoder, through the registry).
        mpp
            µm/px of image queries, so they are rescaled to the encoder's magnification.
            Default: the index's tiling mpp (a log line says so); a query larger than an
            indexed tile's field of view is centre-cropped to it.
        where, drop_neighbours, min_distance, params
            As in :meth:`search`; ``drop_neighbours`` uses the slide and position of tile-table
            queries.
        batch_size
            Images per forward pass.

        Returns
        -------
        DataFrame as in :meth:`search`.

        Example
        -------
        >>> hits = idx.search_image("query.png", k=20, encoder="uni")
        >>> hits = idx.search_image(tiles[:3], k=20, drop_neighbours=2000)
        """
        vecs, where_from, enc_name = Q.image_vectors(
            self, images, encoder=encoder, mpp=mpp, batch_size=batch_size
        )
        return self.search(
            vecs,
            k,
            where=where,
            drop_neighbours=drop_neighbours,
            min_distance=min_distance,
            query_tiles=where_from,
            params=params,
            encoder=enc_name,
        )

    def search_text(
        self,
        texts: str | Sequence[str],
        k: int = 10,
        *,
        encoder=None,
        where: str | None = None,
        min_distance: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Tiles that match text descriptions (through the encoder's text tower).

        The index must hold the joint image-text space (``use_rep="X_<slug>_proj"``).

        Parameters
        ----------
        texts
            One description or a list.
        k
            Hits per text.
        encoder
            The image-text encoder that embedded the tiles (name or instance; defaults to
            the index's, through the registry).
        where, min_distance, params
            As in :meth:`search`.

        Returns
        -------
        DataFrame as in :meth:`search`; ``query`` numbers the texts, ``text`` repeats them.

        Example
        -------
        >>> hits = idx.search_text("mitotic figures in tumor epithelium", k=20, encoder="conch")
        """
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        vecs, enc_name = Q.text_vectors(self, texts, encoder=encoder)
        hits = self.search(
            vecs, k, where=where, min_distance=min_distance, params=params, encoder=enc_name
        )
        hits.insert(1, "text", np.asarray(texts, dtype=object)[hits["query"].to_numpy()])
        return hits

    def search_slides(
        self,
        query,
        k: int = 5,
        *,
        tiles_k: int = 10,
        mosaic: int | None = None,
        encoder=None,
        where: str | None = None,
        exclude_query_slides: bool = True,
        params: Mapping[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Slides most like a query slide, by majority vote of tile hits (Yottixel/SISH style).

        Each query tile (or each tile of a mosaic) retrieves its ``tiles_k`` nearest tiles and
        votes once for every slide among them. Slides are ranked by votes, ties broken by the
        median over voting tiles of their best similarity in that slide.

        Parameters
        ----------
        query
            Tiles of the query slide: rows of a tile table (embedded or not), images, or an
            ``(n, dim)`` array of vectors.
        k
            Slides to return.
        tiles_k
            Tile hits per query tile.
        mosaic
            Summarise the query by this many representative tiles (k-means on the query's
            embeddings, the tile nearest each centre), as Yottixel's mosaic.
        encoder
            Needed when query pixels must be embedded.
        where, params
            As in :meth:`search`.
        exclude_query_slides
            Leave the query's own slide(s) out of the results (tile-table queries).

        Returns
        -------
        DataFrame with ``rank, slide_id, votes, vote_frac, median_score, best_score,
        n_hits`` and every metadata column that is constant within a slide (labels).

        Example
        -------
        >>> slides = idx.search_slides(query_tiles, k=5, mosaic=16)
        """
        n_slides = len(self.slide_ids)
        if int(k) > n_slides:
            raise IndexError_(f"k={k} exceeds the {n_slides} slides in the index")
        if (
            isinstance(query, np.ndarray)
            and query.ndim == 2
            and query.shape[1] == self.dim
            and query.dtype != np.uint8
        ):
            vecs, qtiles, enc_name = T.prepare(query, self.dim), None, None
        else:
            vecs, qtiles, enc_name = Q.image_vectors(self, query, encoder=encoder)
        if mosaic is not None and mosaic < len(vecs):
            rows = R.mosaic_rows(vecs, int(mosaic))
            vecs = vecs[rows]
            qtiles = None if qtiles is None else qtiles.iloc[rows]
        if exclude_query_slides and qtiles is not None:
            own = sorted(set(qtiles[K.SLIDE_ID].astype(str)))
            clause = f"{K.SLIDE_ID} not in {own!r}"
            where = clause if where is None else f"({where}) and {clause}"
        tk = min(int(tiles_k), len(self))
        D, nbr = self.search_vectors(vecs, tk, where=where, params=params, encoder=enc_name)
        return R.slide_votes(D, nbr, self._meta, self.slide_metadata(), int(k))

    def slide_metadata(self) -> pd.DataFrame:
        """One row per slide: the metadata columns that are constant within every slide."""
        if self._slide_meta is None:
            self._slide_meta = self._meta.slide_table()
        return self._slide_meta

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

    def remove(self, slides: str | Sequence[str]) -> int:
        """Remove every tile of the given slides (ids of the other tiles are unchanged).

        An in-memory index drops their vectors. An on-disk index never rewrites its
        ``.ivfdata`` lists: the removed ids become tombstones that every search skips
        (results equal an index built without those slides); a segment left with no live
        tile is dropped whole. :meth:`save` writes the change atomically.

        Returns
        -------
        The number of tiles removed.

        Example
        -------
        >>> idx.remove(["S1", "S2"])
        """
        from mmpath.index._change import remove

        return remove(self, slides)

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
