"""Image-to-RNA on awkward inputs: odd gene specs, one gene, zero genes, NaNs, bad params."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import mmpath as mm
from mmpath.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def spots():
    synth = mm.datasets.synthetic_st(1, grid=6, n_sample_genes=2, seed=0)
    st, slide = synth.samples[0]
    out = mm.pp.spot_tiles(st, slide)
    mm.tl.morphology_features(out, slide)
    return out


def test_a_panel_naming_no_gene_is_a_data_error(spots, tmp_path):
    with pytest.raises(DataError, match="names no gene"):
        mm.tl.fit_expression(spots, ",", use_rep="X_morph")
    empty = tmp_path / "panel.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="is empty"):
        mm.tl.fit_expression(spots, f"file:{empty}", use_rep="X_morph")
    with pytest.raises(DataError, match="does not exist"):
        mm.tl.fit_expression(spots, f"file:{tmp_path}", use_rep="X_morph")


def test_one_gene_table_fits_predicts_and_cross_validates(spots, tmp_path):
    one = spots[:, :1].copy()
    model = mm.tl.fit_expression(one, "hvg:5", use_rep="X_morph")  # more asked than held
    assert model.genes == [one.var_names[0]]
    pred = mm.tl.predict_expression(one, model)
    np.testing.assert_allclose(pred.X[:, 0], model.estimator.predict(one.obsm["X_morph"]).ravel())
    model.save(tmp_path / "m")
    again = mm.tl.predict_expression(one, tmp_path / "m")
    np.testing.assert_allclose(again.X, pred.X, rtol=1e-5)
    scores = mm.tl.evaluate_expression(one, "all", n_splits=3, use_rep="X_morph")
    assert set(scores.model) == {"ridge", "mean"} and scores.pearson.notna().all()


def test_hvg_on_genes_that_never_vary_is_a_data_error(spots):
    zero = spots.copy()
    zero.X = sp.csr_matrix(zero.shape, dtype=np.float32)
    with pytest.raises(DataError, match="no gene varies"):
        mm.tl.fit_expression(zero, "hvg:5", use_rep="X_morph")


def test_nan_expression_is_a_data_error(spots):
    bad = spots.copy()
    bad.X = np.asarray(bad.X.toarray() if sp.issparse(bad.X) else bad.X, np.float32)
    bad.X[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        mm.tl.fit_expression(bad, "all", use_rep="X_morph")


@pytest.mark.parametrize(
    "params",
    [{"n_components": 0}, {"n_components": "many"}, {"alpha": -1.0}, {"n_components": 2.5}],
)
def test_bad_ridge_param_values_are_config_errors(spots, params):
    with pytest.raises(ConfigError, match="must be a positive"):
        mm.tl.fit_expression(spots, "top:3", use_rep="X_morph", params=params)


def test_numeric_strings_from_the_cli_become_numbers():
    from mmpath.tl.expression._model import resolve_params

    # YAML 1.1 reads `--param lr=1e-3` as the string "1e-3".
    p = resolve_params("mlp", None, {"lr": "1e-3", "epochs": "3"})
    assert p["lr"] == 1e-3 and p["epochs"] == 3
    with pytest.raises(ConfigError, match="dropout"):
        resolve_params("mlp", None, {"dropout": 1.5})


def test_a_table_without_genes_is_a_data_error(spots):
    with pytest.raises(DataError, match="no genes"):
        mm.tl.fit_expression(spots[:, :0].copy(), "hvg:5", use_rep="X_morph")


def test_cli_predict_refuses_an_unknown_heatmap_gene_before_writing(spots, tmp_path, capsys):
    from mmpath.cli import main

    mm.tl.fit_expression(spots, "top:3", use_rep="X_morph").save(tmp_path / "model")
    mm.io.write_h5ad(spots, tmp_path / "tiles.h5ad")
    out = tmp_path / "pred.h5ad"
    argv = ["expr", "predict", str(tmp_path / "tiles.h5ad"), "--model", str(tmp_path / "model")]
    assert main([*argv, "--heatmap", "NOT_A_GENE", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "NOT_A_GENE" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_saving_never_replaces_a_folder_of_other_files(spots, tmp_path):
    model = mm.tl.fit_expression(spots, "top:3", use_rep="X_morph")
    precious = tmp_path / "data" / "sub" / "keep.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("precious")
    with pytest.raises(ConfigError, match="not a saved expression model"):
        model.save(tmp_path / "data")
    with pytest.raises(ConfigError, match="is a file"):
        model.save(precious)
    assert precious.read_text() == "precious"
    model.save(tmp_path / "m")
    model.save(tmp_path / "m")  # an existing model folder is replaced as before
    assert mm.tl.predict_expression(spots, tmp_path / "m").n_vars == 3
    model.save(tmp_path / "run" / "model")  # `mmpath train expr` layout: the run folder loads
    assert mm.tl.predict_expression(spots, tmp_path / "run").n_vars == 3


def test_cli_fit_pairs_samples_whose_slides_share_a_file_name(tmp_path):
    import shutil
    from pathlib import Path

    import anndata as ad

    from mmpath.cli import main

    data = mm.datasets.synthetic_st(2, grid=6, directory=tmp_path / "img", seed=1)
    argv = ["-q", "expr", "fit", "--encoder", "morph", "--genes", "top:3", "--folds", "2"]
    for i, (st, slide) in enumerate(data.samples):
        sample = tmp_path / f"sample{i}"  # Space Ranger style: every sample's image is he.*
        sample.mkdir()
        he = sample / f"he{Path(slide.path).suffix}"
        shutil.copy(slide.path, he)
        st.write_h5ad(sample / "st.h5ad")
        argv += ["--st", str(sample / "st.h5ad"), "--slide", str(he)]
    assert main([*argv, "-o", str(tmp_path / "run")]) == 0
    spots = ad.read_h5ad(tmp_path / "run" / "spots.h5ad")
    assert sorted(spots.obs["slide_id"].unique()) == ["sample0_he", "sample1_he"]
    assert mm.io.read_tiles(None, spots[[0, -1]]).shape[0] == 2  # both reopen from provenance


def test_tiles_too_small_for_morphology_and_bad_cli_mpp(spots, tmp_path, capsys):
    from mmpath.cli import main

    tiny = mm.io.ArraySlide(np.full((40, 40, 3), 200, np.uint8), mpp=0.5)
    tiles = mm.pp.tile(tiny, 1, min_tissue=0)[:4].copy()
    with pytest.raises(DataError, match="too small for morphology"):
        mm.tl.morphology_features(tiles, tiny)
    argv = ["-q", "expr", "fit", "--st", "a.h5ad", "--slide", "a.png", "--encoder", "morph"]
    assert main([*argv, "--mpp", "0", "-o", str(tmp_path / "m")]) == 2
    assert "--mpp must be a positive" in capsys.readouterr().err
