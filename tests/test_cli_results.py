"""Results visible from the CLI (issue 11, "results you can see"): zero-shot heatmaps, probe
confusion matrix and ROC, and `mmpath annotate` (labels and metadata without Python)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mmpath as mm
from mmpath import _keys as K
from mmpath.cli import main


@pytest.fixture()
def tiles_path(synthetic_slide, tmp_path):
    tiles = mm.pp.tile(synthetic_slide, 64, mpp=4.0, min_tissue=0.5)
    return mm.io.write_h5ad(tiles, tmp_path / "tables" / "a.h5ad"), tiles


def _png(path) -> np.ndarray:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_zeroshot_writes_heatmaps_per_slide(tiles_path, tmp_path, capsys):
    path, tiles = tiles_path
    out = tmp_path / "zs"
    argv = ["-q", "zeroshot", str(path), "--encoder", "tiny_clip", "--classes", "a b;c"]
    assert main([*argv, "-o", str(out)]) == 0
    assert "3 heatmap PNG(s)" in capsys.readouterr().out
    label, pa = _png(out / "a_zs.png"), _png(out / "a_zs_a_b.png")
    _png(out / "a_zs_c.png")
    assert label.std() > 5 and pa.shape[2] == 3  # a picture, not a blank
    # in place (no -o): no pictures unless asked (--plots); -o with --no-plots: none
    assert main(argv) == 0 and not list(path.parent.glob("*.png"))
    assert main([*argv, "-o", str(tmp_path / "zs2"), "--no-plots"]) == 0
    assert not list((tmp_path / "zs2").glob("*.png"))


def test_probe_writes_confusion_and_roc(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    obs = pd.DataFrame({"side": np.where(y == 1, "right", "left")}, index=[f"r{i}" for i in y])
    obs.index = [f"r{i}" for i in range(80)]
    t = ad.AnnData(obs=obs)
    t.obsm["X_f"] = (y[:, None] * 0.8 + rng.normal(0, 1, (80, 4))).astype(np.float32)
    path = mm.io.write_h5ad(t, tmp_path / "t.h5ad")
    out = tmp_path / "probe"
    argv = ["-q", "probe", str(path), "--use-rep", "X_f", "--label", "side", "--groups", "none"]
    assert main([*argv, "--folds", "3", "-o", str(out)]) == 0
    _png(out / "confusion.png")
    _png(out / "roc.png")
    # the pictures say what the tables say
    df = mm.tl.linear_probe(t, label="side", use_rep="X_f", n_splits=3, groups=None)
    fig = mm.pl.confusion_matrix(df)
    cells = sorted(int(x.get_text()) for x in fig.axes[0].texts)
    assert cells == sorted(df.attrs["confusion_matrix"].to_numpy().ravel().tolist())
    from sklearn.metrics import roc_auc_score

    proba, true = df.attrs["oof_proba"], df.attrs["oof_true"]
    auc = roc_auc_score(true == "right", proba["right"])
    legend = [x.get_text() for x in mm.pl.roc(df).axes[0].get_legend().get_texts()]
    assert legend[0] == f"right (AUC {auc:.3f})"
    assert len(proba) == t.n_obs and not proba.isna().any().any()


def test_annotate_geojson_and_metadata(tiles_path, tmp_path, capsys):
    path, tiles = tiles_path
    sid = str(tiles.obs[K.SLIDE_ID].iloc[0])
    W = float(tiles.obs[K.X].max())
    half = W / 2
    poly = [[0, 0], [half, 0], [half, 1e5], [0, 1e5], [0, 0]]
    gj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [poly]},
                "properties": {"classification": {"name": "Tumor"}},
            }
        ],
    }
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / f"{sid}.geojson").write_text(json.dumps(gj))
    pd.DataFrame({"slide_id": [sid], "diagnosis": ["adenoma"], "site": ["colon"]}).to_csv(
        tmp_path / "cohort.csv", index=False
    )
    rc = main(
        [
            "-q",
            "annotate",
            str(path),
            "--geojson",
            str(tmp_path / "ann"),
            "--metadata",
            str(tmp_path / "cohort.csv"),
            "--columns",
            "diagnosis",
        ]
    )
    assert rc == 0
    assert "annotated 1/1 table(s)" in capsys.readouterr().out
    t = mm.io.read_h5ad(path)
    size0 = float(t.uns[K.UNS][K.UNS_SLIDES][sid][K.UNS_TILING]["size0"])
    inside = (t.obs[K.X] + size0 / 2 <= half - 1).to_numpy()
    outside = (t.obs[K.X] >= half).to_numpy()
    assert (t.obs["annotation"][inside] == "Tumor").all()
    assert t.obs["annotation"][outside].isna().all()
    assert (t.obs["diagnosis"] == "adenoma").all() and "site" not in t.obs
    # bad inputs: one line, exit 2
    assert main(["-q", "annotate", str(path)]) == 2
    assert (
        main(["-q", "annotate", str(path), str(path), "--geojson", str(tmp_path / "x.geojson")])
        == 2
    )
    assert main(["-q", "annotate", str(path), "--metadata", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "nothing to do" in err and "one file but 2 tables" in err and "does not exist" in err
