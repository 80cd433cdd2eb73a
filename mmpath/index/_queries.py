"""The DataFrame queries of a :class:`~mmpath.index.TileIndex`: nearest tiles of vectors,
images or texts as hit tables, and slide search by majority vote of tile hits.

They build on the raw contract (``search_vectors``, ``filter_ids``, ``_check_k``, ``dim``,
``_meta``) that :class:`~mmpath.index.tileindex.TileIndex` provides, and on
:mod:`mmpath.index._query` (embedding queries) and :mod:`mmpath.index._results` (hit tables).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import IndexError_
from mmpath.index import _query as Q
from mmpath.index import _results as R
from mmpath.index import _tables as T

__all__ = ["TileQueries"]


class TileQueries:
    """Hit-table queries, mixed into :class:`~mmpath.index.TileIndex` (see its methods)."""

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
