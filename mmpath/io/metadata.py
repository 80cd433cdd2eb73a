"""Per-slide metadata (diagnosis, site, stage, split...) joined into a tile table's obs.

Slides missing from the metadata table are an error by default: a tile without its label
silently becoming NaN is how training sets lose rows or leak. Pass ``missing="warn"`` to
accept it (their columns are left missing and a warning names them). Rows of the metadata
table for slides that are not in the tile table are ignored.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.io import _prov

log = logging.getLogger(__name__)

__all__ = ["join_metadata"]

_TSV = {".tsv", ".tab", ".txt"}
_PARQUET = {".parquet", ".pq"}


def _read_table(path: Path, on: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"metadata file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a directory; pass the metadata file (CSV/TSV/parquet)")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    suffix = suffix.removesuffix(".gz")
    try:
        if suffix in _PARQUET:
            return pd.read_parquet(path)
        sep = "\t" if suffix in _TSV else ","
        # Slide ids are names, not numbers: "001" must stay "001".
        return pd.read_csv(path, sep=sep, dtype={on: str})
    except Exception as err:  # noqa: BLE001 - pandas/pyarrow raise many types for bad files
        raise DataError(
            f"cannot read {str(path)!r} as a {suffix or 'csv'} table ({err}); save it as "
            "CSV, TSV or parquet with a header row"
        ) from None


def join_metadata(
    adata,
    table: pd.DataFrame | str | os.PathLike[str],
    *,
    on: str = K.SLIDE_ID,
    columns: Sequence[str] | None = None,
    missing: str = "error",
) -> None:
    """Join per-slide columns of a metadata table into ``adata.obs``, in place.

    Parameters
    ----------
    adata
        A tile table (or any AnnData whose ``obs[on]`` names the slide of each row).
    table
        A DataFrame, or a ``.csv``/``.tsv``/``.parquet`` file (``.csv.gz`` too), with one
        row per slide.
    on
        Key column, present in both ``table`` and ``adata.obs``. Keys compare as strings.
    columns
        Columns of ``table`` to join; all but ``on`` by default. Existing obs columns of the
        same name are replaced (with a warning).
    missing
        What to do with slides of ``adata`` that have no row in ``table``: ``"error"``
        (default) raises :class:`~mmpath.errors.DataError`; ``"warn"`` leaves their values
        missing and warns.

    Returns
    -------
    ``None``; text columns become categoricals, numbers keep their dtype.

    Example
    -------
    >>> mm.io.join_metadata(tiles, "cohort.csv", columns=["diagnosis", "site"])
    >>> tiles.obs.groupby("diagnosis").size()
    """
    if missing not in ("error", "warn"):
        raise ValueError("missing must be 'error' or 'warn'")
    source = None
    if isinstance(table, (str, os.PathLike)):
        source = str(Path(table).expanduser())
        table = _read_table(Path(source), on)
    elif not isinstance(table, pd.DataFrame):
        raise DataError(f"table must be a DataFrame or a file path, got {type(table).__name__}")
    what = repr(source) if source else "the metadata table"
    if on not in table.columns:
        raise DataError(
            f"{what} has no {on!r} column (columns: {', '.join(map(str, table.columns[:10]))}); "
            f"rename its slide id column or pass on=<column>"
        )
    if on not in adata.obs:
        raise DataError(f"the tile table has no obs[{on!r}] column to join on; pass on=<column>")
    keys = table[on].astype(str).str.strip()
    dup = keys[keys.duplicated()].unique().tolist()
    if dup:
        raise DataError(
            f"{what} has several rows for {len(dup)} slide(s) ({', '.join(dup[:5])}); keep "
            "one row per slide"
        )
    if columns is None:
        columns = [c for c in table.columns if c != on]
    else:
        columns = list(columns)
        unknown = [c for c in columns if c not in table.columns]
        if unknown:
            raise DataError(f"{what} has no column(s) {unknown}; it has {list(table.columns)}")
    if not columns:
        raise DataError(f"{what} has no columns besides {on!r} to join")

    indexed = table.set_index(keys)[columns]
    row_keys = adata.obs[on].astype(str)
    wanted = pd.unique(row_keys)
    absent = [k for k in wanted if k not in indexed.index]
    if absent:
        msg = (
            f"{len(absent)} of {len(wanted)} slide(s) have no row in {what}: "
            f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}"
        )
        if missing == "error":
            raise DataError(msg + "; add them, or pass missing='warn' to leave them empty")
        warnings.warn(msg + "; their metadata columns are left missing", stacklevel=2)
    clash = [c for c in columns if c in adata.obs]
    if clash:
        warnings.warn(f"replacing existing obs column(s) {clash}", stacklevel=2)
    for col in columns:
        values = row_keys.map(indexed[col])
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            values = values.astype("category")
        adata.obs[col] = values
    record = {"source": source or "DataFrame", "on": on, "columns": columns}
    _prov.record_run(adata, "join_metadata", "join_metadata", record)
    log.info("joined %d column(s) for %d slide(s) from %s", len(columns), len(wanted), what)
