"""Reading spatial transcriptomics: 10x Visium (Space Ranger folders) and spatial ``.h5ad``.

Both readers return the layout scanpy/squidpy use, so the result works with their plotting
and with :func:`mmpath.pp.spot_tiles`:

* ``X`` counts (spots x genes), ``var_names`` made unique;
* ``obsm["spatial"]``: spot centres ``(x, y)`` in full-resolution image pixels, i.e. the pixels
  of the H&E image Space Ranger aligned (that image is the slide's level 0);
* ``uns["spatial"][library_id]["scalefactors"]``: ``spot_diameter_fullres``,
  ``tissue_hires_scalef``, ``tissue_lowres_scalef`` (+ ``images`` when present).

Folders are read with scanpy's ``sc.read_visium`` where it works (Space Ranger 1.x
``tissue_positions_list.csv`` and 2.x ``tissue_positions.csv``). When scanpy refuses (no
hires/lowres PNG, or Space Ranger 3's ``tissue_positions.parquet``) a small reader of the
same layout takes over.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpath import _keys as K
from mmpath.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from mmpath.io.slide import ArraySlide

log = logging.getLogger(__name__)

__all__ = ["read_visium", "spot_scalefactors", "visium_image"]

VISIUM_SPOT_DIAMETER_UM = 55.0
_POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
_POSITION_COLUMNS = [
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def read_visium(
    path: str | os.PathLike[str],
    *,
    count_file: str = "filtered_feature_bc_matrix.h5",
    library_id: str | None = None,
) -> AnnData:
    """Read a 10x Visium Space Ranger folder, or an ``.h5ad`` with spatial coordinates.

    Parameters
    ----------
    path
        A Space Ranger ``outs/`` folder (``filtered_feature_bc_matrix.h5`` +
        ``spatial/{tissue_positions(_list).csv, scalefactors_json.json}``) or an ``.h5ad`` file
        with ``obsm["spatial"]`` and ``uns["spatial"][library_id]["scalefactors"]``.
    count_file
        Count matrix inside the folder.
    library_id
        Library to use when an ``.h5ad`` holds several; the folder's library otherwise.

    Returns
    -------
    AnnData (spots x genes) with ``obsm["spatial"]`` in full-resolution pixels ``(x, y)`` and
    the scale factors in ``uns["spatial"][library_id]["scalefactors"]``.

    Example
    -------
    >>> st = mm.io.read_visium("sample/outs/")
    >>> st.obsm["spatial"][:2]
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{str(path)!r} does not exist; pass a Space Ranger folder or an .h5ad")
    if path.is_file():
        if path.suffix.lower() != ".h5ad":
            raise DataError(
                f"{str(path)!r} is neither a Space Ranger folder nor an .h5ad file; pass the "
                "folder holding filtered_feature_bc_matrix.h5 and spatial/"
            )
        from mmpath.io.table import read_h5ad

        st = read_h5ad(path)  # one DataError for empty or damaged files
    else:
        st = _read_folder(path, count_file)
    st.var_names_make_unique()
    _validate(st, library_id, str(path))
    st.obsm[K.SPATIAL] = np.asarray(st.obsm[K.SPATIAL], dtype=np.float64)
    return st


def _read_folder(path: Path, count_file: str):
    import scanpy as sc

    counts = path / count_file
    if not counts.exists():
        raise DataError(
            f"{str(path)!r} has no {count_file}; pass the Space Ranger outs/ folder "
            "(or count_file= for a raw_feature_bc_matrix.h5)"
        )
    if not counts.is_file() or counts.stat().st_size == 0:
        what = "a folder" if counts.is_dir() else "empty"
        raise DataError(
            f"the count matrix {str(counts)!r} is {what}, not a 10x .h5 file; copy "
            f"{count_file} from the Space Ranger outs/ folder again"
        )
    if not (path / "spatial" / "scalefactors_json.json").exists():
        raise DataError(
            f"{str(path / 'spatial')!r} has no scalefactors_json.json: without scale factors "
            "spots cannot be linked to the image; copy the Space Ranger spatial/ folder whole"
        )
    _read_scalefactors(path / "spatial" / "scalefactors_json.json")  # fail before scanpy does
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = sc.read_visium(path, count_file=count_file)
    except (OSError, ValueError, KeyError) as err:
        log.info("scanpy's read_visium refused %s (%s); reading the layout directly", path, err)
        st = _read_folder_direct(path, count_file)
    st.obsm[K.SPATIAL] = np.asarray(st.obsm[K.SPATIAL], dtype=np.float64)
    lib = next(iter(st.uns["spatial"]))
    st.uns["spatial"][lib].setdefault("metadata", {})["path"] = str(path.resolve())
    return st


def _read_folder_direct(path: Path, count_file: str):
    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = sc.read_10x_h5(path / count_file)
    except (OSError, ValueError, KeyError, TypeError) as err:
        text = " ".join(str(err).split())[:160]
        raise DataError(
            f"the count matrix {str(path / count_file)!r} cannot be read as a 10x .h5 file "
            f"({type(err).__name__}: {text}); copy it from the Space Ranger outs/ folder again"
        ) from None
    spatial = path / "spatial"
    found = [spatial / f for f in _POSITION_FILES if (spatial / f).exists()]
    if not found:
        raise DataError(
            f"{str(spatial)!r} has none of {', '.join(_POSITION_FILES)}; spots have no "
            "coordinates (copy the Space Ranger spatial/ folder whole)"
        )
    pos_file = found[0]
    if pos_file.suffix == ".parquet":
        pos = pd.read_parquet(pos_file).set_index("barcode")
    else:
        pos = pd.read_csv(pos_file, header=_csv_header(pos_file), index_col=0)
    pos = pos.iloc[:, :5]
    pos.columns = _POSITION_COLUMNS
    missing = st.obs_names.difference(pos.index)
    if len(missing):
        raise DataError(
            f"{len(missing)} barcodes of {count_file} have no position in {pos_file.name} "
            f"(e.g. {missing[0]!r}); the matrix and spatial/ folder come from different runs"
        )
    pos = pos.loc[st.obs_names]
    st.obs = st.obs.join(pos[["in_tissue", "array_row", "array_col"]])
    # 10x names the image row "pxl_row" (y) and column "pxl_col" (x); obsm holds (x, y).
    st.obsm[K.SPATIAL] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    scalef = _read_scalefactors(spatial / "scalefactors_json.json")
    images = {}
    for res in ("hires", "lowres"):
        png = spatial / f"tissue_{res}_image.png"
        if png.exists():
            from PIL import Image

            images[res] = np.asarray(Image.open(png).convert("RGB"))
    st.uns["spatial"] = {
        path.name or "visium": {"scalefactors": scalef, "images": images, "metadata": {}}
    }
    return st


def _csv_header(pos_file: Path) -> int | None:
    """0 when the positions CSV starts with a header row, else None.

    Space Ranger 1.x writes ``tissue_positions_list.csv`` without one and 2.x
    ``tissue_positions.csv`` with one, but renamed or re-exported files mix the two: look.
    """
    with open(pos_file, encoding="utf-8", errors="replace") as fh:
        fields = fh.readline().strip().split(",")
    try:
        float(fields[1])  # in_tissue: a number on a data row, a column name on a header
    except (IndexError, ValueError):
        return 0
    return None


def _read_scalefactors(file: Path) -> dict[str, Any]:
    """Space Ranger's scale factors, checked: a JSON object with a positive spot diameter."""
    try:
        sf = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{str(file)!r} is not valid JSON ({err}); copy it again from the Space Ranger outs/"
        ) from None
    diameter = sf.get("spot_diameter_fullres") if isinstance(sf, dict) else None
    if not isinstance(diameter, (int, float)) or isinstance(diameter, bool) or diameter <= 0:
        raise DataError(
            f"{str(file)!r} has no positive spot_diameter_fullres: spots cannot be sized on the "
            "image; copy scalefactors_json.json from the same Space Ranger run"
        )
    return sf


def _library(st, library_id: str | None, what: str) -> str:
    libs = list(st.uns.get("spatial", {}) or {})
    if not libs:
        raise DataError(
            f"{what} has no uns['spatial'] entry with scale factors; add "
            "uns['spatial'][library_id]['scalefactors'] = {'spot_diameter_fullres': ...} "
            "(Space Ranger's scalefactors_json.json)"
        )
    if library_id is None:
        if len(libs) > 1:
            raise DataError(f"{what} holds libraries {libs}; pass library_id= (one of them)")
        return str(libs[0])
    if library_id not in libs:
        raise DataError(f"library {library_id!r} is not in {what}; available: {libs}")
    return library_id


def _validate(st, library_id: str | None, what: str) -> None:
    if K.SPATIAL not in st.obsm:
        raise DataError(
            f"{what} has no obsm['spatial'] spot coordinates; it is not spatial "
            "transcriptomics (or store the full-resolution (x, y) centres there)"
        )
    xy = np.asarray(st.obsm[K.SPATIAL])
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise DataError(f"{what}: obsm['spatial'] must be finite (n_spots, 2) (x, y) pixels")
    spot_scalefactors(st, library_id=library_id)


def spot_scalefactors(st, *, library_id: str | None = None) -> dict[str, Any]:
    """The Space Ranger scale factors of ``st`` (``spot_diameter_fullres`` required).

    Example
    -------
    >>> mm.io.spot_scalefactors(st)["spot_diameter_fullres"]
    """
    lib = _library(st, library_id, "the spatial table")
    node = st.uns["spatial"][lib]
    sf = node.get("scalefactors") if hasattr(node, "get") else None
    if not sf or "spot_diameter_fullres" not in sf:
        raise DataError(
            f"library {lib!r} has no scale factors (spot_diameter_fullres); copy Space "
            "Ranger's scalefactors_json.json into uns['spatial'][lib]['scalefactors']"
        )
    out = {}
    for k, v in sf.items():  # numbers only: files sometimes carry notes or version strings
        try:
            out[str(k)] = float(np.asarray(v).item())
        except (TypeError, ValueError):
            log.debug("scale factor %r=%r of library %r is not a number: ignored", k, v, lib)
    diameter = out.get("spot_diameter_fullres", float("nan"))
    if not np.isfinite(diameter) or diameter <= 0:
        raise DataError(
            f"library {lib!r}: spot_diameter_fullres must be a positive number of pixels, got "
            f"{sf['spot_diameter_fullres']!r}; copy it from Space Ranger's scalefactors_json.json"
        )
    out["library_id"] = lib
    return out


def visium_image(st, res: str = "hires", *, library_id: str | None = None) -> ArraySlide:
    """The ``hires``/``lowres`` image stored with a Visium table, as an ArraySlide.

    Its mpp is derived from the spot diameter (55 µm = ``spot_diameter_fullres`` px); pass
    ``scale=res`` to :func:`mmpath.pp.spot_tiles` so spot coordinates are scaled to it.

    Example
    -------
    >>> img = mm.io.visium_image(st, "hires")
    >>> spots = mm.pp.spot_tiles(st, img, scale="hires")
    """
    from mmpath.io.slide import ArraySlide

    sf = spot_scalefactors(st, library_id=library_id)
    lib = sf["library_id"]
    images = st.uns["spatial"][lib].get("images", {}) or {}
    if res not in images:
        raise DataError(f"library {lib!r} stores no {res!r} image (has: {list(images)})")
    key = f"tissue_{res}_scalef"
    if key not in sf:
        raise DataError(f"library {lib!r} has no {key} scale factor for its {res} image")
    mpp = VISIUM_SPOT_DIAMETER_UM / sf["spot_diameter_fullres"] / sf[key]
    img = np.asarray(images[res])
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return ArraySlide(img[..., :3], mpp=mpp, slide_id=f"{lib}_{res}")
