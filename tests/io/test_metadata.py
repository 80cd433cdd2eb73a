"""join_metadata: per-slide columns from CSV/TSV/parquet/DataFrame into obs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import DataError


def _tiles(slide_id: str, n_side: int = 2):
    img = np.full((100 * n_side, 100 * n_side, 3), 255, np.uint8)
    return mm.pp.tile(mm.io.ArraySlide(img, slide_id=slide_id), 100, min_tissue=0.0)


@pytest.fixture()
def cohort():
    return mm.io.concat([_tiles("001", 2), _tiles("slide b", 3)])  # 4 + 9 rows


META = pd.DataFrame(
    {
        "slide_id": ["slide b", "001", "extra"],
        "diagnosis": ["tumor", "normal", "tumor"],
        "age": [71, 54, 60],
        "site": ["lung", "colon", "skin"],
    }
)


@pytest.mark.parametrize("fmt", ["frame", "csv", "tsv", "parquet"])
def test_join_all_formats(cohort, tmp_path, fmt):
    if fmt == "frame":
        table = META
    elif fmt == "parquet":
        table = tmp_path / "meta.parquet"
        META.to_parquet(table)
    else:
        table = tmp_path / f"meta data.{fmt}"  # a space in the path
        META.to_csv(table, sep="," if fmt == "csv" else "\t", index=False)
    assert mm.io.join_metadata(cohort, table) is None
    obs = cohort.obs
    # "001" stays a string id (not the number 1) and every row gets its slide's values.
    assert (obs.loc[obs[K.SLIDE_ID] == "001", "diagnosis"] == "normal").sum() == 4
    assert (obs.loc[obs[K.SLIDE_ID] == "slide b", "age"] == 71).sum() == 9
    assert isinstance(obs["diagnosis"].dtype, pd.CategoricalDtype)
    assert set(obs["diagnosis"].cat.categories) == {"normal", "tumor"}
    assert pd.api.types.is_integer_dtype(obs["age"])
    assert cohort.uns[K.UNS][K.UNS_RUNS]["join_metadata"]["columns"] == ["diagnosis", "age", "site"]


def test_join_selected_columns_roundtrip(cohort, tmp_path):
    mm.io.join_metadata(cohort, META, columns=["site"])
    assert "diagnosis" not in cohort.obs and "age" not in cohort.obs
    back = mm.io.read_h5ad(mm.io.write_h5ad(cohort, tmp_path / "c.h5ad"))
    assert back.obs["site"].astype(str).tolist() == ["colon"] * 4 + ["lung"] * 9


def test_missing_key_column(cohort, tmp_path):
    with pytest.raises(DataError, match="no 'slide_id' column"):
        mm.io.join_metadata(cohort, META.rename(columns={"slide_id": "case"}))
    cohort.obs["case"] = cohort.obs[K.SLIDE_ID].astype(str)
    mm.io.join_metadata(cohort, META.rename(columns={"slide_id": "case"}), on="case")
    assert cohort.obs["diagnosis"].astype(str).tolist() == ["normal"] * 4 + ["tumor"] * 9
    with pytest.raises(DataError, match="no column"):
        mm.io.join_metadata(cohort, META, columns=["grade"])


def test_duplicate_slide_rows(cohort):
    dup = pd.concat([META, META.iloc[[0]]])
    with pytest.raises(DataError, match="several rows .*slide b"):
        mm.io.join_metadata(cohort, dup)


def test_slides_missing_from_table(cohort):
    partial = META[META["slide_id"] != "001"]
    with pytest.raises(DataError, match="1 of 2 slide.*001"):
        mm.io.join_metadata(cohort, partial)
    assert "diagnosis" not in cohort.obs  # nothing half-written
    with pytest.warns(UserWarning, match="001"):
        mm.io.join_metadata(cohort, partial, missing="warn")
    obs = cohort.obs
    assert obs.loc[obs[K.SLIDE_ID] == "001", "diagnosis"].isna().all()
    assert (obs.loc[obs[K.SLIDE_ID] == "slide b", "diagnosis"] == "tumor").all()


def test_bad_files(cohort, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        mm.io.join_metadata(cohort, tmp_path / "nope.csv")
    with pytest.raises(DataError, match="directory"):
        mm.io.join_metadata(cohort, tmp_path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read"):
        mm.io.join_metadata(cohort, bad)


def test_replacing_a_column_warns(cohort):
    mm.io.join_metadata(cohort, META, columns=["site"])
    with pytest.warns(UserWarning, match="replacing"):
        mm.io.join_metadata(cohort, META.assign(site="x"), columns=["site"])
    assert (cohort.obs["site"] == "x").all()
