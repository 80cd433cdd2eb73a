"""A lazy view of an archive: per-slide tables on disk, concatenated only when asked.

``mm.archive.open(folder)`` reads the slides' records (small JSON), never the tables: the
view lists done tables (:meth:`Archive.table_paths`, what :func:`mmpath.index.build` streams),
reads one slide at a time (:meth:`Archive.iter_tables`), and concatenates a chosen subset with
:func:`mmpath.io.concat` (:meth:`Archive.to_adata`), so nothing holds a whole archive in RAM.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from mmpath.archive import store as S
from mmpath.errors import ArchiveError

__all__ = ["Archive", "open_archive"]


class Archive:
    """A cohort view over an archive folder (see :func:`mmpath.archive.open`).

    Example
    -------
    >>> arc = mm.archive.open("archive/")
    >>> for tiles in arc.iter_tables():
    ...     print(tiles.n_obs)
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.store = S.ArchiveStore(folder).require()
        self.root = self.store.root

    @property
    def slides(self) -> pd.DataFrame:
        """The per-slide status table (:func:`mmpath.archive.status`)."""
        from mmpath.archive.run import status

        return status(self.root)

    @property
    def slide_ids(self) -> list[str]:
        """Ids of the done slides, in a stable (sorted) order."""
        return [rec["slide_id"] for rec in self.store.records() if self.store.is_done(rec)]

    def table_paths(self, slide_ids: Sequence[str] | None = None) -> list[Path]:
        """Paths of the done slides' tables (``.h5ad``), optionally of some slides only."""
        ids = self.slide_ids
        if slide_ids is not None:
            missing = sorted(set(slide_ids) - set(ids))
            if missing:
                raise ArchiveError(
                    f"slide(s) {', '.join(missing[:5])} are not done in {str(self.root)!r}; "
                    "see `mmpath archive status`"
                )
            ids = [s for s in ids if s in set(slide_ids)]
        return [self.store.table_path(s) for s in ids]

    def read(self, slide_id: str):
        """One done slide's tile table."""
        from mmpath import io

        return io.read_h5ad(self.table_paths([slide_id])[0])

    def iter_tables(self, slide_ids: Sequence[str] | None = None) -> Iterator:
        """Yield the done slides' tables one at a time (memory holds one slide)."""
        from mmpath import io

        for path in self.table_paths(slide_ids):
            yield io.read_h5ad(path)

    def to_adata(self, slide_ids: Sequence[str] | None = None, *, join: str = "inner"):
        """Concatenate done slides (all, or ``slide_ids``) into one cohort table.

        Uses :func:`mmpath.io.concat`, so every slide's provenance is kept. Holds the chosen
        slides in memory: pass ``slide_ids`` for large archives.
        """
        from mmpath import io

        tables = list(self.iter_tables(slide_ids))
        if not tables:
            raise ArchiveError(f"archive {str(self.root)!r} has no done slide to concatenate")
        return io.concat(tables, join=join)

    def __len__(self) -> int:
        return len(self.slide_ids)

    def __repr__(self) -> str:
        counts = self.slides.state.value_counts().to_dict()
        text = ", ".join(f"{n} {s}" for s, n in counts.items()) or "empty"
        return f"Archive({str(self.root)!r}: {text})"


def open_archive(folder: str | os.PathLike[str]) -> Archive:
    """Open an archive folder as a lazy cohort view.

    Parameters
    ----------
    folder
        A folder made by :func:`mmpath.archive.run`.

    Returns
    -------
    An :class:`Archive`: ``slides`` (status table), ``table_paths()``, ``iter_tables()``,
    ``read(slide_id)`` and ``to_adata(slide_ids=None)``.

    Example
    -------
    >>> arc = mm.archive.open("archive/")
    >>> cohort = arc.to_adata(arc.slide_ids[:10])
    """
    return Archive(folder)
