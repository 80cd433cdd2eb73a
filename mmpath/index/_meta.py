"""Tile metadata of an index, kept out of RAM at scale.

What every query needs per hit is held compactly in the index process: the sorted tile ids
(int64), slide codes (int32 into a sorted list of slide ids) and x, y (int32 when they are
integers that fit, else float64): about 20 bytes per tile, 2 GB for 10^8 tiles. Everything else
(``obs_name``, labels, scores, ``mpp``) stays in ``metadata.parquet`` and is read for the hits
only, by row group, with only the columns asked for; ``where=`` filters stream the row groups
reading only the columns the filter names.

A store built in memory (``mm.index.build`` on AnnData) keeps the whole frame instead, so small
indexes behave exactly as before. Rows added after loading wait in a small in-memory frame and
removed rows are dropped from the id array; :meth:`MetaStore.write` streams the result into a
new parquet file without reading the old one whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.index import _tables as T

log = logging.getLogger(__name__)

#: Rows per parquet row group: the unit read to join the metadata of a few hits.
ROW_GROUP = 65_536
CORE = (K.SLIDE_ID, K.X, K.Y)
META_NAME = "metadata.parquet"


def _compact(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.dtype.kind in "iu" and (len(v) == 0 or (v.min() >= -(2**31) and v.max() < 2**31)):
        return v.astype(np.int32)
    return v.astype(np.float64)


def _sorted_codes(names: np.ndarray) -> tuple[np.ndarray, list[str]]:
    cats, codes = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    return codes.astype(np.int32), [str(c) for c in cats]


class MetaStore:
    """Tile id -> slide, x, y as arrays; the other columns in a frame or a parquet file."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.codes = np.zeros(0, np.int32)
        self.categories: list[str] = []
        self.x = np.zeros(0, np.int32)
        self.y = np.zeros(0, np.int32)
        self.columns: list[str] = list(T.FIXED)
        self._frame: pd.DataFrame | None = None  # frame-backed: every row and column
        self._path: Path | None = None  # parquet-backed: the file ...
        self._file_ids = np.zeros(0, np.int64)  # ... its tile ids in file order (sorted)
        self._rg_bounds = np.zeros(1, np.int64)  # ... first row of each row group
        self._extra: pd.DataFrame | None = None  # ... and rows added since loading
        self._pf = None  # the open parquet file, for joins on hits

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> MetaStore:
        """A store over a metadata frame (indexed by tile id) held in memory."""
        s = cls()
        s._frame = frame
        s.columns = [str(c) for c in frame.columns]
        s._set_core(
            frame.index.to_numpy(np.int64),
            frame[K.SLIDE_ID].astype(str).to_numpy() if len(frame) else np.zeros(0, str),
            frame[K.X].to_numpy() if len(frame) else np.zeros(0, np.int32),
            frame[K.Y].to_numpy() if len(frame) else np.zeros(0, np.int32),
        )
        return s

    @classmethod
    def from_parquet(cls, path: Path) -> MetaStore:
        """A store over ``metadata.parquet``: reads the core columns, batch by batch."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        s = cls()
        s._path = Path(path)
        pf = pq.ParquetFile(s._path)
        names = [n for n in pf.schema_arrow.names if not n.startswith("__")]
        s.columns = [n for n in names if n != T.TILE_ID]
        rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        s._rg_bounds = np.r_[0, np.cumsum(rows)].astype(np.int64)
        ids, xs, ys, codes = [], [], [], []
        lut: dict[str, int] = {}
        for batch in pf.iter_batches(columns=[T.TILE_ID, *CORE]):
            ids.append(batch.column(T.TILE_ID).to_numpy())
            xs.append(batch.column(K.X).to_numpy(zero_copy_only=False))
            ys.append(batch.column(K.Y).to_numpy(zero_copy_only=False))
            sid = batch.column(K.SLIDE_ID)
            if not hasattr(sid, "dictionary"):
                sid = pc.dictionary_encode(sid)
            local = np.asarray(
                [lut.setdefault(str(v), len(lut)) for v in sid.dictionary.to_pylist()], np.int32
            )
            codes.append(local[sid.indices.to_numpy(zero_copy_only=False)])
        order = sorted(lut, key=lut.get)
        cats, remap = np.unique(np.asarray(order, dtype=str), return_inverse=True)
        s._file_ids = np.concatenate(ids).astype(np.int64) if ids else s.ids
        s.ids = s._file_ids
        if len(s.ids) > 1 and not (np.diff(s.ids) > 0).all():
            from mmpath.errors import IndexError_

            raise IndexError_(f"{str(path)!r} has unsorted tile ids; rebuild the index")
        s.codes = remap.astype(np.int32)[np.concatenate(codes)] if codes else s.codes
        s.categories = [str(c) for c in cats]
        s.x = _compact(np.concatenate(xs)) if xs else s.x
        s.y = _compact(np.concatenate(ys)) if ys else s.y
        return s

    def _set_core(self, ids, sids, x, y) -> None:
        self.ids = np.asarray(ids, np.int64)
        self.codes, self.categories = _sorted_codes(sids)
        self.x, self.y = _compact(x), _compact(y)

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in the store (a clear error for unknown ids)."""
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(self.ids, ids)
        bad = (pos >= len(self.ids)) | (self.ids[np.minimum(pos, len(self.ids) - 1)] != ids)
        if len(ids) and (len(self.ids) == 0 or bad.any()):
            from mmpath.errors import IndexError_

            raise IndexError_(f"tile id(s) {ids[bad][:5].tolist()} are not in the index")
        return pos

    def slide_ids(self) -> list[str]:
        """Slide ids present, in order of first appearance."""
        return [self.categories[c] for c in pd.unique(self.codes)]

    def slides_of(self, ids: np.ndarray) -> np.ndarray:
        cats = np.asarray(self.categories, dtype=object)
        return cats[self.codes[self.positions(ids)]] if len(cats) else np.zeros(0, object)

    def xy(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = self.positions(ids)
        return self.x[pos].astype(float), self.y[pos].astype(float)

    def rows(self, ids: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
        """Metadata rows of ``ids`` (in that order, repeats allowed), indexed by tile id."""
        ids = np.asarray(ids, np.int64)
        cols = self.columns if columns is None else [c for c in self.columns if c in columns]
        if self._frame is not None:
            return self._frame.loc[ids, cols]
        self.positions(ids)  # unknown ids are an error, not NaN rows
        uniq = np.unique(ids)
        in_file = np.isin(uniq, self._file_ids)
        parts = []
        if in_file.any():
            parts.append(self._file_rows(uniq[in_file], cols))
        if (~in_file).any():
            parts.append(self._extra.loc[uniq[~in_file]].reindex(columns=cols))
        out = pd.concat(parts) if len(parts) > 1 else parts[0]
        return self._typed(out.loc[ids].reindex(columns=cols))

    def _file_rows(self, uniq: np.ndarray, cols: list[str]) -> pd.DataFrame:
        import pyarrow.parquet as pq

        pos = np.searchsorted(self._file_ids, uniq)
        rg = np.searchsorted(self._rg_bounds, pos, side="right") - 1
        if self._pf is None:
            self._pf = pq.ParquetFile(self._path)
        pf = self._pf
        pieces = []
        for g in np.unique(rg):
            tbl = pf.read_row_group(int(g), columns=[T.TILE_ID, *cols], use_pandas_metadata=False)
            local = pos[rg == g] - self._rg_bounds[g]
            pieces.append(tbl.take(local).to_pandas())
        got = pd.concat(pieces, ignore_index=True)
        got.index = pd.Index(got.pop(T.TILE_ID).to_numpy(np.int64), name=T.TILE_ID)
        return got

    def _typed(self, df: pd.DataFrame) -> pd.DataFrame:
        if K.SLIDE_ID in df:
            df[K.SLIDE_ID] = pd.Categorical(df[K.SLIDE_ID].astype(str), categories=self.categories)
        df.index = pd.Index(df.index.to_numpy(np.int64), name=T.TILE_ID)
        return df

    def chunks(self, columns: list[str] | None = None):
        """The live rows as frames of at most a row group each (``columns`` only)."""
        cols = self.columns if columns is None else [c for c in self.columns if c in columns]
        if self._frame is not None:
            yield self._frame[cols]
            return
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self._path)
        for g in range(pf.num_row_groups):
            tbl = pf.read_row_group(g, columns=[T.TILE_ID, *cols], use_pandas_metadata=False)
            df = tbl.to_pandas()
            df.index = pd.Index(df.pop(T.TILE_ID).to_numpy(np.int64), name=T.TILE_ID)
            df = df.loc[members(df.index.to_numpy(), self.ids)]
            if len(df):
                yield self._typed(df)
        if self._extra is not None and len(self._extra):
            yield self._typed(self._extra.reindex(columns=cols).copy())

    def filter_ids(self, where: str) -> np.ndarray:
        """Ids of the tiles matching ``where``, reading only the columns it names."""
        from mmpath.index._filter import filter_columns, filter_mask

        if self._frame is not None:
            return self.ids[filter_mask(self._frame, where)]
        need = filter_columns(where, self.columns)
        hits = [c.index.to_numpy(np.int64)[filter_mask(c, where)] for c in self.chunks(need)]
        return np.sort(np.concatenate(hits)) if hits else np.zeros(0, np.int64)

    def slide_table(self) -> pd.DataFrame:
        """One row per slide: the columns constant within every slide (streamed by chunks)."""
        from mmpath.index._results import constant_per_slide

        if self._frame is not None:
            return constant_per_slide(self._frame)
        firsts, nuniq = [], []
        for c in self.chunks():
            sid = c[K.SLIDE_ID].astype(str).to_numpy()
            skip = {T.OBS_NAME, K.SLIDE_ID, K.X, K.Y, K.TISSUE_FRAC, K.TILE_OK}
            cols = [k for k in c.columns if k not in skip]
            head = c[cols].set_axis(sid)
            firsts.append(head[~head.index.duplicated()])
            nuniq.append(c[cols].groupby(sid, sort=True).nunique(dropna=False))
        if not firsts or firsts[0].shape[1] == 0:
            return pd.DataFrame(index=pd.Index(sorted(set(self.slide_ids())), name=K.SLIDE_ID))
        first = pd.concat(firsts)
        varies = pd.concat(nuniq).groupby(level=0).max() > 1
        varies |= first.groupby(level=0).nunique(dropna=False) > 1
        const = [c for c in first.columns if not varies[c].any()]
        out = first[const].groupby(level=0, sort=True).first()
        out.index.name = K.SLIDE_ID
        return out

    def frame(self) -> pd.DataFrame:
        """Every live row and column in one frame (reads the whole file: small indexes only)."""
        if self._frame is not None:
            return self._frame
        parts = list(self.chunks())
        if not parts:
            return pd.DataFrame(columns=self.columns, index=pd.Index([], name=T.TILE_ID))
        return self._typed(pd.concat(parts))

    # -- changing -----------------------------------------------------------------------------

    def append(self, new: pd.DataFrame) -> None:
        """Add rows (ids above every present id)."""
        if self._frame is not None:
            self._frame = T.append(self._frame, new)
            self.columns = [str(c) for c in self._frame.columns]
        else:
            self._extra = new if self._extra is None else T.append(self._extra, new)
            self.columns += [str(c) for c in new.columns if c not in self.columns]
        names = np.r_[np.asarray(self.categories, dtype=object)[self.codes], new[K.SLIDE_ID]]
        self._set_core(
            np.r_[self.ids, new.index.to_numpy(np.int64)],
            names.astype(str),
            np.r_[self.x, new[K.X].to_numpy()],
            np.r_[self.y, new[K.Y].to_numpy()],
        )

    def drop(self, ids: np.ndarray) -> None:
        """Remove the rows of ``ids``; slides left without rows leave the categories."""
        keep = ~np.isin(self.ids, ids)
        if self._frame is not None:
            frame = self._frame.loc[keep].copy()
            if K.SLIDE_ID in frame:
                frame[K.SLIDE_ID] = frame[K.SLIDE_ID].cat.remove_unused_categories()
            self._frame = frame
        elif self._extra is not None:
            self._extra = self._extra.loc[~np.isin(self._extra.index.to_numpy(), ids)]
        names = np.asarray(self.categories, dtype=object)[self.codes[keep]]
        self._set_core(self.ids[keep], names.astype(str), self.x[keep], self.y[keep])

    def write(self, path: Path) -> None:
        """Write the live rows to ``path`` (parquet, ids sorted), one chunk at a time."""
        write_frames(self.chunks(), path)


def members(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """``np.isin(ids, sorted_ids)`` by binary search: O(len(ids) log n), where ``np.isin``
    sorts ``sorted_ids`` again for every row group (quadratic over a large store)."""
    if not len(sorted_ids):
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


def _unify(schemas) -> object:
    """One arrow schema for frames whose columns may differ: same type kept, numbers mixed
    become float64, anything else mixed becomes string; dictionaries become their values."""
    import pyarrow as pa

    order: list[str] = []
    types: dict[str, list] = {}
    for sch in schemas:
        for f in sch:
            t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            if f.name not in types:
                order.append(f.name)
            types.setdefault(f.name, []).append(t)
    fields = []
    for name in order:
        ts = types[name]
        if all(t == ts[0] for t in ts):
            t = ts[0]
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in ts):
            t = pa.float64()
        else:
            t = pa.string()
        fields.append(pa.field(name, t if not pa.types.is_null(t) else pa.string()))
    return pa.schema(fields)


def _arrow(df: pd.DataFrame):
    import pyarrow as pa

    out = df.copy()
    if K.SLIDE_ID in out:
        out[K.SLIDE_ID] = out[K.SLIDE_ID].astype(str)
    out.insert(0, T.TILE_ID, out.index.to_numpy(np.int64))
    return pa.Table.from_pandas(out.reset_index(drop=True), preserve_index=False)


def _conform(tbl, schema):
    import pyarrow as pa

    cols = []
    for f in schema:
        if f.name in tbl.column_names:
            col = tbl.column(f.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            cols.append(col.cast(f.type))
        else:
            cols.append(pa.nulls(len(tbl), f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def write_part(df: pd.DataFrame, path: Path) -> None:
    """One frame of metadata rows as a parquet part (merged later by :func:`merge_parts`)."""
    import pyarrow.parquet as pq

    pq.write_table(_arrow(df), path)


def merge_parts(parts: list[Path], path: Path) -> None:
    """Parquet parts (tile ids ascending across them) as one file with a unified schema,
    read and written one part at a time; the parts are deleted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not parts:
        cols = {c: pa.array([], pa.string()) for c in T.FIXED}
        pq.write_table(pa.table({T.TILE_ID: pa.array([], pa.int64()), **cols}), path)
        return
    schema = _unify(pq.read_schema(p) for p in parts)
    with pq.ParquetWriter(path, schema) as w:
        for p in parts:
            w.write_table(_conform(pq.read_table(p), schema), row_group_size=ROW_GROUP)
    for p in parts:
        p.unlink()


def write_frames(frames, path: Path) -> None:
    """Write metadata frames (indexed by tile id, ascending across frames) as one parquet
    file, holding one frame at a time."""
    import shutil

    path = Path(path)
    spill = path.with_name(path.name + ".parts")
    spill.mkdir(parents=True, exist_ok=True)
    try:
        parts = []
        for i, df in enumerate(frames):
            parts.append(spill / f"{i:06d}.parquet")
            write_part(df, parts[-1])
        merge_parts(parts, path)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
