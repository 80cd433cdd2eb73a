"""The one partial ``.h5ad`` reader: ``obs``, one ``obsm`` entry and ``uns["mmpath"]``.

Index builds from files (:mod:`mmpath.index._source`) and MIL bag stores
(:mod:`mmpath.io.bags`) read many tile tables whose ``X``, layers and other embeddings they
never use; reading the whole AnnData would load them all. :func:`read_parts` opens the file
with h5py and reads only what is asked, through ``anndata.io.read_elem``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov

__all__ = ["TableParts", "open_h5", "read_parts"]


class TableParts(NamedTuple):
    """What :func:`read_parts` read from one file."""

    obs: Any  # pandas DataFrame
    uns: dict[str, Any]  # uns["mmpath"] (or the asked sections of it)
    rep: Any  # obsm[use_rep] (numpy, or the asked rows), or None when absent / not asked
    rep_keys: list[str]  # the file's embedding keys (obsm "X_*")


def open_h5(path: str | os.PathLike[str]):
    """``h5py.File(path, "r")``, or one :class:`DataError` line for a damaged file."""
    import h5py

    try:
        return h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001 - h5py raises many types for damaged files
        raise DataError(
            f"cannot read {str(path)!r} as an .h5ad table ({err}); re-create it"
        ) from None


def read_parts(
    path: str | os.PathLike[str],
    use_rep: str | None = None,
    *,
    rows: np.ndarray | None = None,
    uns_sections: tuple[str, ...] | None = None,
) -> TableParts:
    """Read ``obs``, ``uns["mmpath"]`` and (``use_rep``) ``obsm[use_rep]`` of one file.

    Parameters
    ----------
    path
        An ``.h5ad`` file.
    use_rep
        obsm key to read (``None``: none).
    rows
        Read only these rows of ``obsm[use_rep]`` (a dense dataset is sliced on disk; rows
        come back in sorted order).
    uns_sections
        Read only these sections of ``uns["mmpath"]`` (``None``: all of it).
    """
    from anndata.io import read_elem

    with open_h5(path) as f:
        try:
            obs = read_elem(f["obs"])
            uns: dict[str, Any] = {}
            if "uns" in f and K.UNS in f["uns"]:
                node = f["uns"][K.UNS]
                if uns_sections is None:
                    uns = read_elem(node)
                else:
                    uns = {s: _prov.plain(read_elem(node[s])) for s in uns_sections if s in node}
            obsm = f.get("obsm", {})
            keys = [k for k in obsm if k.startswith(K.REP_PREFIX)]
            rep = None
            if use_rep is not None and use_rep in obsm:
                elem = obsm[use_rep]
                if rows is None:
                    rep = read_elem(elem)
                elif hasattr(elem, "shape") and not hasattr(elem, "keys"):  # a dense dataset
                    rep = elem[np.sort(rows)] if len(rows) else elem[:0]
                else:
                    rep = np.asarray(read_elem(elem))[rows]
        except (KeyError, OSError, TypeError, ValueError) as err:
            raise DataError(f"cannot read {str(path)!r} as a tile table ({err})") from None
    return TableParts(obs, uns, rep, keys)
