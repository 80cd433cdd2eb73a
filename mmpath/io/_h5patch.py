"""Write a table that differs from its file on disk by a few added elements, without
re-encoding the rest (issue 11: many tiny tables).

``anndata`` writes every element of a table anew, one HDF5 object at a time; a one-tile table
carries some 70 objects (most of them the slide's nested provenance in ``uns``), so writing
1,000 such tables back after embedding them costs far more than embedding their tiles.
:func:`write_added` instead copies the file the table was read from (bytes, not objects) to
the atomic temporary and writes only the elements that were added or replaced (obsm keys,
obs columns, one ``uns`` sub-dict), each with ``anndata``'s own element writer; what reads
back is equal to a full ``adata.write_h5ad`` (tested). Sub-dicts that repeat across tables
(an embedding's provenance) are written once per run into an in-memory HDF5 file and copied
from there by HDF5 itself (``H5Ocopy``), which is one call instead of one per object.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmpath.io._atomic import atomic_path


class SubtreeCache:
    """Encoded ``uns`` values, keyed by their JSON text, in an in-memory HDF5 file."""

    def __init__(self) -> None:
        self._file = None
        self._names: dict[str, str] = {}
        self._seen: set[str] = set()

    def put(self, group, name: str, value: Any) -> None:
        """Write ``group[name] = value`` (as anndata encodes it), copying a cached encoding
        when the same value was written before."""
        from anndata.io import write_elem

        try:
            text = json.dumps(value, sort_keys=True, allow_nan=True)
        except (TypeError, ValueError):  # not plain JSON: written directly, not cached
            write_elem(group, name, value)
            return
        if text not in self._names and isinstance(value, dict) and text not in self._seen:
            # A dict seen for the first time (an embedding record differs from table to
            # table by its per-slide entries) is written part by part, its parts cached;
            # a dict seen twice is cached whole.
            self._seen.add(text)
            sub = group.create_group(name)
            sub.attrs["encoding-type"] = "dict"
            sub.attrs["encoding-version"] = "0.1.0"
            for k, v in value.items():
                self.put(sub, str(k), v)
            return
        if text not in self._names:
            self._names[text] = self._store(value)
        group.copy(self._h5()[self._names[text]], group, name)

    def _h5(self):
        import h5py

        if self._file is None:
            self._file = h5py.File(
                f"mmpath-cache-{id(self)}", "w", driver="core", backing_store=False
            )
        return self._file

    def _store(self, value: Any) -> str:
        from anndata.io import write_elem

        name = str(len(self._names))
        write_elem(self._h5(), name, value)
        return name

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _group(f, path: Sequence[str]):
    """``f[path]``, creating missing dict groups on the way."""
    g = f
    for part in path:
        if part not in g:
            sub = g.create_group(part)
            sub.attrs["encoding-type"] = "dict"
            sub.attrs["encoding-version"] = "0.1.0"
            g = sub
        else:
            g = g[part]
    return g


def write_added(
    adata,
    source: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    obsm: Sequence[str] = (),
    obs: Sequence[str] = (),
    uns: Sequence[str] = (),
    cache: SubtreeCache | None = None,
    recovered: bool = False,
) -> Path:
    """Write ``adata`` to ``path`` atomically, given that it equals the table in ``source``
    except for the listed elements (added or replaced).

    Parameters
    ----------
    adata
        The table.
    source
        The file ``adata`` was read from, unchanged since (``path`` itself to write in place).
    path
        Where to write.
    obsm, obs
        obsm keys and obs columns that were added or replaced.
    uns
        The path of one ``uns`` value that was added or replaced
        (e.g. ``("mmpath", "embeddings", "X_uni")``); every other ``uns`` value is unchanged.
    cache
        Encoded ``uns`` values shared by a run's tables (see :class:`SubtreeCache`).
    recovered
        The caller has just recovered ``path`` (:func:`mmpath.io._atomic.recover`).

    Returns
    -------
    ``path``.
    """
    import h5py
    from anndata.io import write_elem

    path = Path(path)
    cache = cache or SubtreeCache()
    with atomic_path(path, recovered=recovered) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            for key in obsm:
                g = _group(f, ["obsm"])
                if key in g:
                    del g[key]
                write_elem(g, key, adata.obsm[key])
            if obs:
                g = f["obs"]
                for col in obs:
                    if col in g:
                        del g[col]
                    write_elem(g, col, adata.obs[col]._values)
                g.attrs["column-order"] = [str(c) for c in adata.obs.columns]
            if uns:
                parent = _group(f, ["uns", *uns[:-1]])
                if uns[-1] in parent:
                    del parent[uns[-1]]
                node = adata.uns
                for part in uns:
                    node = node[part]
                cache.put(parent, uns[-1], node)
    return path
