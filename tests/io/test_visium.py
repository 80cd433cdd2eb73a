"""Reading 10x Visium folders and spatial .h5ad files on the real squidpy fixture."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import DataError, SlideError


@pytest.fixture(scope="module")
def squidpy(testdata):
    return testdata / "squidpy"


def _positions(folder):
    pos = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    return pos


def test_reads_a_space_ranger_folder(squidpy):
    st = mm.io.read_visium(squidpy)
    assert st.shape == (100, 100)
    pos = _positions(squidpy).loc[st.obs_names]
    # 10x columns: in_tissue, array_row, array_col, pxl_row (y), pxl_col (x); obsm is (x, y).
    np.testing.assert_array_equal(st.obsm[K.SPATIAL], pos[[5, 4]].to_numpy(float))
    sf = mm.io.spot_scalefactors(st)
    assert sf["spot_diameter_fullres"] == pytest.approx(89.42751063343188)
    assert float(st.X.sum()) > 0


def test_direct_reader_matches_scanpy_when_images_are_missing(squidpy, tmp_path):
    ref = mm.io.read_visium(squidpy)
    folder = tmp_path / "outs"
    shutil.copytree(squidpy, folder, ignore=shutil.ignore_patterns("*.png", "*.h5ad", "*.jpg"))
    # Space Ranger 2.x: tissue_positions.csv with a header row.
    pos = _positions(folder)
    pos.index.name = "barcode"
    pos.columns = [
        "in_tissue",
        "array_row",
        "array_col",
        "pxl_row_in_fullres",
        "pxl_col_in_fullres",
    ]
    (folder / "spatial" / "tissue_positions_list.csv").unlink()
    pos.to_csv(folder / "spatial" / "tissue_positions.csv")
    st = mm.io.read_visium(folder)
    np.testing.assert_array_equal(st.obsm[K.SPATIAL], ref.obsm[K.SPATIAL])
    np.testing.assert_array_equal(st.X.toarray(), ref.X.toarray())
    assert mm.io.spot_scalefactors(st)["tissue_hires_scalef"] == pytest.approx(0.150015)


def test_missing_scalefactors_is_a_clear_error(squidpy, tmp_path):
    folder = tmp_path / "outs"
    shutil.copytree(squidpy, folder, ignore=shutil.ignore_patterns("*.h5ad", "*.jpg"))
    (folder / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(DataError, match="no scalefactors_json.json"):
        mm.io.read_visium(folder)
    with pytest.raises(DataError, match="neither a Space Ranger folder"):
        mm.io.read_visium(squidpy / "test_img.jpg")


def test_reads_spatial_h5ad_and_links_spots_to_the_image(squidpy, tmp_path):
    st = mm.io.read_visium(squidpy / "test_data.h5ad")
    assert st.n_obs == 49 and st.n_vars == 1999
    slide = mm.io.open_slide(squidpy / "test_img.jpg")
    assert slide.mpp is None
    spots = mm.pp.spot_tiles(st, slide, mpp=1.0)
    sf = mm.io.spot_scalefactors(st)
    # Without metadata the slide's mpp comes from the spot diameter (55 µm).
    assert slide.mpp == pytest.approx(55 / sf["spot_diameter_fullres"])
    assert spots.n_obs == 49 and spots.obs[K.TISSUE_FRAC].notna().all()
    tiles = mm.io.read_tiles(None, spots[:4])  # reopened from provenance, mpp override kept
    assert tiles.shape == (4, 55, 55, 3)

    bare = st.copy()
    bare.uns["spatial"][sf["library_id"]].pop("scalefactors")
    path = tmp_path / "bare.h5ad"
    bare.write_h5ad(path)
    with pytest.raises(DataError, match="no scale factors"):
        mm.io.read_visium(path)


def test_folder_spots_outside_the_wrong_image_and_hires_scaling(squidpy):
    st = mm.io.read_visium(squidpy)
    wrong = mm.io.open_slide(squidpy / "test_img.jpg", mpp=0.5)
    with pytest.raises(SlideError, match="spots lie outside"):
        mm.pp.spot_tiles(st, wrong)
    hires = mm.io.visium_image(st, "hires")
    sf = json.loads((squidpy / "spatial" / "scalefactors_json.json").read_text())
    assert hires.mpp == pytest.approx(55 / sf["spot_diameter_fullres"] / sf["tissue_hires_scalef"])
    spots = mm.pp.spot_tiles(st, hires, scale="hires")
    np.testing.assert_allclose(spots.obs[K.SPOT_X], st.obsm[K.SPATIAL][:, 0] * 0.150015)
    assert mm.io.read_tiles(hires, spots[:2]).shape[1] == round(55 / hires.mpp)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"tissue_hires_scalef": 0.15}', "no positive spot_diameter_fullres"),
        ('{"spot_diameter_fullres": 0}', "no positive spot_diameter_fullres"),
        ("[1, 2]", "no positive spot_diameter_fullres"),
    ],
)
def test_broken_scalefactors_file_is_a_clear_error(squidpy, tmp_path, content, match):
    folder = tmp_path / "outs"
    shutil.copytree(squidpy, folder, ignore=shutil.ignore_patterns("*.h5ad", "*.jpg"))
    (folder / "spatial" / "scalefactors_json.json").write_text(content)
    with pytest.raises(DataError, match=match):
        mm.io.read_visium(folder)


def test_h5ad_scalefactors_with_notes_or_a_zero_diameter(squidpy, tmp_path):
    st = mm.io.read_visium(squidpy / "test_data.h5ad")
    lib = mm.io.spot_scalefactors(st)["library_id"]
    st.uns["spatial"][lib]["scalefactors"]["note"] = "exported by hand"
    sf = mm.io.spot_scalefactors(st)  # non-numbers are ignored, not a ValueError
    assert "note" not in sf and sf["spot_diameter_fullres"] > 0
    st.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"] = 0.0
    path = tmp_path / "zero.h5ad"
    st.write_h5ad(path)
    with pytest.raises(DataError, match="must be a positive number"):
        mm.io.read_visium(path)


@pytest.mark.parametrize(
    ("name", "header"),
    [("tissue_positions.csv", False), ("tissue_positions_list.csv", True)],
)
def test_positions_file_whose_header_does_not_match_its_name(squidpy, tmp_path, name, header):
    ref = mm.io.read_visium(squidpy)
    folder = tmp_path / "outs"
    shutil.copytree(squidpy, folder, ignore=shutil.ignore_patterns("*.png", "*.h5ad", "*.jpg"))
    pos = _positions(folder)
    pos.index.name = "barcode"
    pos.columns = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fr"]
    (folder / "spatial" / "tissue_positions_list.csv").unlink()
    pos.to_csv(folder / "spatial" / name, header=header)  # re-exported or renamed by hand
    st = mm.io.read_visium(folder)
    assert st.n_obs == ref.n_obs
    np.testing.assert_array_equal(st.obsm[K.SPATIAL], ref.obsm[K.SPATIAL])


def test_spot_tiles_refuses_bad_sizes_and_warns_on_an_inconsistent_mpp(squidpy, caplog):
    st = mm.io.read_visium(squidpy / "test_data.h5ad")
    for kwargs in ({"mpp": 0}, {"mpp": -1.0}, {"size": 0}, {"mpp": float("nan")}):
        slide = mm.io.open_slide(squidpy / "test_img.jpg")
        with pytest.raises(DataError, match="must be > 0"):
            mm.pp.spot_tiles(st, slide, **kwargs)
    true_mpp = 55 / mm.io.spot_scalefactors(st)["spot_diameter_fullres"]
    consistent = mm.io.open_slide(squidpy / "test_img.jpg", mpp=true_mpp * 1.1)
    caplog.clear()
    mm.pp.spot_tiles(st, consistent, mpp=1.0)
    assert "disagrees" not in caplog.text
    off = mm.io.open_slide(squidpy / "test_img.jpg", mpp=true_mpp * 0.4)
    with caplog.at_level("WARNING"):
        mm.pp.spot_tiles(st, off, mpp=1.0)
    assert "disagrees with the" in caplog.text
