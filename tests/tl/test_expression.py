"""Image-to-RNA: synthetic ST with known drivers, metrics vs scipy, folds, fusion, persistence."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import ConfigError, DataError, SlideError
from mmpath.metrics import pearson_per_gene, spearman_per_gene
from mmpath.tl.expression import ExpressionModel

FAST_TORCH = {"epochs": 40, "batch_size": 128}


@pytest.fixture(scope="module")
def synth():
    return mm.datasets.synthetic_st(6, grid=10, n_sample_genes=3, seed=0)


@pytest.fixture(scope="module")
def cohort(synth):
    tables = []
    for st, slide in synth.samples:
        spots = mm.pp.spot_tiles(st, slide)
        mm.tl.morphology_features(spots, slide)
        tables.append(spots)
    return mm.io.concat(tables)


def _by_kind(scores, synth, model):
    per_gene = scores[scores.model == model].groupby("gene").pearson.mean()
    return (per_gene[synth.morph_genes], per_gene[synth.sample_genes], per_gene[synth.noise_genes])


# -- metrics -----------------------------------------------------------------------------------
def test_pearson_and_spearman_equal_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 4))
    b = a * rng.normal(size=4) + rng.normal(size=(50, 4))
    b[:, 3] = np.round(b[:, 3])  # ties for Spearman
    r, rho = pearson_per_gene(a, b), spearman_per_gene(a, b)
    for j in range(4):
        assert r[j] == pytest.approx(scipy.stats.pearsonr(a[:, j], b[:, j])[0], abs=1e-10)
        assert rho[j] == pytest.approx(scipy.stats.spearmanr(a[:, j], b[:, j])[0], abs=1e-10)
    const = np.column_stack([a[:, 0], np.full(50, 2.5)])
    assert pearson_per_gene(const, const[:, ::-1]).tolist() == [0.0, 0.0]


def test_bleep_loss_equals_open_clip_with_hard_targets():
    torch = pytest.importorskip("torch")
    from open_clip.loss import ClipLoss

    from mmpath.tl.expression._heads import bleep_loss

    x = torch.nn.functional.normalize(torch.randn(16, 64), dim=-1)
    # With a tiny temperature the soft targets of BLEEP become one-hot: CLIP's loss.
    ours = bleep_loss(x, x, temperature=0.01)
    ref = ClipLoss()(x, x, logit_scale=torch.tensor(100.0))
    assert float(ours) == pytest.approx(float(ref), rel=1e-4)


# -- targets -----------------------------------------------------------------------------------
def test_targets_are_scanpy_log_normalised_and_genes_selected(cohort):
    import scanpy as sc

    from mmpath.tl.expression._targets import prepare_targets

    Y, spec = prepare_targets(cohort, "top:5")
    ref = sc.pp.log1p(sc.pp.normalize_total(cohort.copy(), target_sum=1e4, inplace=False)["X"])
    means = np.asarray(ref.mean(0)).ravel()
    top = set(np.asarray(cohort.var_names)[np.argsort(-means)[:5]])
    assert set(spec["genes"]) == top and spec["normalized"]
    idx = cohort.var_names.get_indexer(spec["genes"])
    np.testing.assert_allclose(Y, np.asarray(ref[:, idx]), rtol=1e-5)
    _, hvg = prepare_targets(cohort, "hvg:7")
    assert len(hvg["genes"]) == 7


def test_missing_genes_are_a_clear_error(cohort):
    with pytest.raises(DataError, match="2 gene.*not in the table: NOPE, ALSO_NOPE"):
        mm.tl.fit_expression(cohort, ["MORPH_0", "NOPE", "ALSO_NOPE"], use_rep="X_morph")


# -- models recover what they should -----------------------------------------------------------
def test_ridge_recovers_driven_genes_and_mean_baseline_scores_zero(cohort, synth, tmp_path):
    scores = mm.tl.evaluate_expression(cohort, "all", n_splits=3, use_rep="X_morph", out=tmp_path)
    morph, _, noise = _by_kind(scores, synth, "ridge")
    assert morph.mean() > noise.mean() + 0.4, (morph, noise)
    assert morph.min() > noise.max()
    base = scores[scores.model == "mean"]
    assert abs(base.pearson.mean()) < 0.05
    summary = mm.tl.summarize_expression(scores)
    assert summary.model.iloc[0] == "ridge"
    for name in ("scores.csv", "summary.csv", "pearson.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert set(pd.read_csv(tmp_path / "scores.csv").model) == {"ridge", "mean"}


@pytest.mark.parametrize("method", ["mlp", "contrastive"])
def test_learned_heads_recover_driven_genes(cohort, synth, method):
    train = cohort.obs[K.SLIDE_ID].isin(["sample0", "sample1", "sample2", "sample3"]).to_numpy()
    model = mm.tl.fit_expression(
        cohort[train], "all", method=method, use_rep="X_morph", params=FAST_TORCH
    )
    test = cohort[~train]
    pred = mm.tl.predict_expression(test, model)
    from mmpath.tl.expression._targets import targets_for

    r = pd.Series(
        pearson_per_gene(targets_for(test, model.genes, model.targets), pred.X), index=model.genes
    )
    assert r[synth.morph_genes].mean() > r[synth.noise_genes].mean() + 0.35, r


def test_fusion_beats_image_only_when_genomic_carries_signal(cohort, synth):
    kw = {"n_splits": 3, "use_rep": "X_morph"}
    image = mm.tl.evaluate_expression(cohort, "all", **kw)
    fused = mm.tl.evaluate_expression(cohort, "all", genomic=synth.genomic, fusion="concat", **kw)
    _, img_sample, _ = _by_kind(image, synth, "ridge")
    _, fus_sample, _ = _by_kind(fused, synth, "ridge+concat")
    assert fus_sample.mean() > img_sample.mean() + 0.25, (img_sample, fus_sample)


def test_gated_fusion_learns_the_genomic_signal(cohort, synth):
    train = cohort.obs[K.SLIDE_ID].isin(["sample0", "sample1", "sample2", "sample3"]).to_numpy()
    from mmpath.tl.expression._targets import targets_for

    out = {}
    for fusion in (None, "gated"):
        genomic = synth.genomic if fusion else None
        model = mm.tl.fit_expression(
            cohort[train],
            "all",
            method="mlp",
            use_rep="X_morph",
            genomic=genomic,
            fusion=fusion,
            params={"epochs": 60},
        )
        test = cohort[~train]
        pred = mm.tl.predict_expression(test, model, genomic=genomic)
        Y = targets_for(test, model.genes, model.targets)
        out[fusion] = pd.Series(pearson_per_gene(Y, pred.X), index=model.genes)
    assert out["gated"][synth.sample_genes].mean() > out[None][synth.sample_genes].mean() + 0.3


def test_genomic_derived_from_targets_is_refused(cohort):
    leaky = cohort.copy()
    from mmpath.tl.expression._targets import prepare_targets

    Y, _ = prepare_targets(leaky, ["MORPH_3"])
    leaky.obsm["X_leak"] = Y
    with pytest.raises(DataError, match="varies within"):
        mm.tl.fit_expression(
            leaky, ["MORPH_3"], use_rep="X_morph", genomic="X_leak", fusion="concat"
        )
    one = leaky[leaky.obs[K.SLIDE_ID] == "sample0"].copy()
    one.obs["spot"] = np.arange(one.n_obs).astype(str)
    gen = pd.DataFrame({"bulk": Y[: one.n_obs, 0]}, index=one.obs["spot"])
    with pytest.raises(DataError, match="equals target gene 'MORPH_3'"):
        mm.tl.fit_expression(
            one, ["MORPH_3"], use_rep="X_morph", genomic=gen, fusion="concat", sample_key="spot"
        )
    with pytest.raises(DataError, match="missing for 5 sample"):
        mm.tl.fit_expression(
            cohort,
            "top:3",
            use_rep="X_morph",
            fusion="concat",
            genomic=pd.DataFrame({"g": [1.0]}, index=["sample0"]),
        )


# -- splits ------------------------------------------------------------------------------------
def test_splits_never_leak(cohort):
    from mmpath.metrics import group_kfold

    folds = group_kfold(cohort, 3)
    slides = cohort.obs[K.SLIDE_ID].astype(str).to_numpy()
    seen = []
    for tr, te in folds:
        assert not set(slides[tr]) & set(slides[te])
        seen.append(te)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(cohort.n_obs))
    one = cohort[cohort.obs[K.SLIDE_ID] == "sample0"].copy()
    with pytest.warns(UserWarning, match="spatial-block"):
        scores = mm.tl.evaluate_expression(one, "all", n_splits=3, use_rep="X_morph")
    assert scores.fold.nunique() == 3 and scores.n_test.groupby(scores.fold).first().sum() == 100


# -- model object, persistence, prediction table -----------------------------------------------
def test_ridge_is_the_sklearn_pipeline_and_round_trips(cohort, tmp_path):
    model = mm.tl.fit_expression(cohort, "hvg:8", use_rep="X_morph")
    X = cohort.obsm["X_morph"]
    np.testing.assert_allclose(model.predict_arrays(X), model.estimator.predict(X), atol=1e-4)
    path = model.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "model.safetensors"]
    assert not list(tmp_path.glob(".m.tmp-*"))
    again = ExpressionModel.load(path)
    assert again.genes == model.genes and again.targets == model.targets
    np.testing.assert_allclose(again.predict_arrays(X), model.predict_arrays(X), atol=1e-6)


def test_contrastive_round_trips(cohort, tmp_path):
    model = mm.tl.fit_expression(
        cohort, "top:4", method="contrastive", use_rep="X_morph", params={"epochs": 3}
    )
    pred = mm.tl.predict_expression(cohort, model.save(tmp_path / "c"))
    np.testing.assert_allclose(pred.X, model.predict_arrays(cohort.obsm["X_morph"]), atol=1e-5)


def test_prediction_table_works_with_scanpy_and_pl_tiles(synth):
    import scanpy as sc

    st, slide = synth.samples[0]
    spots = mm.pp.spot_tiles(st, slide)
    mm.tl.morphology_features(spots, slide)
    model = mm.tl.fit_expression(spots, "all")
    tiles = mm.pp.tile(slide, 28, min_tissue=0.0)
    mm.tl.morphology_features(tiles, slide)
    pred = mm.tl.predict_expression(tiles, model)
    assert pred.shape == (tiles.n_obs, len(model.genes))
    assert list(pred.obs_names) == list(tiles.obs_names)
    assert pred.uns[K.UNS][K.UNS_EXPRESSION]["method"] == "ridge"
    sc.pp.pca(pred, n_comps=5)
    # gauss + sklearn kNN: same graph API without numba compiling umap (30 s on a cold cache)
    sc.pp.neighbors(pred, n_neighbors=5, method="gauss", transformer="sklearn")
    sc.tl.leiden(pred, resolution=0.5, flavor="igraph", n_iterations=2)
    assert pred.obs["leiden"].nunique() >= 2
    fig = mm.pl.tiles(pred, slide, color="MORPH_3")
    assert fig is not None
    with pytest.raises(DataError, match="no obsm"):
        mm.tl.predict_expression(mm.pp.tile(slide, 28, min_tissue=0.0), model)
    bad = tiles.copy()
    bad.obsm["X_morph"] = bad.obsm["X_morph"][:, :5]
    with pytest.raises(DataError, match="5 dims"):
        mm.tl.predict_expression(bad, model)
    # a tile whose read failed (NaN embedding) is predicted as NaN; the others are unchanged
    holes = tiles.copy()
    holes.obsm["X_morph"] = holes.obsm["X_morph"].astype(np.float64)
    holes.obsm["X_morph"][0] = np.nan
    part = mm.tl.predict_expression(holes, model)
    assert np.isnan(part.X[0]).all()
    np.testing.assert_allclose(part.X[1:], pred.X[1:], rtol=1e-5, atol=1e-6)
    holes.obsm["X_morph"][:] = np.nan
    with pytest.raises(DataError, match="no finite row"):
        mm.tl.predict_expression(holes, model)


def test_bad_methods_and_params_are_config_errors(cohort):
    with pytest.raises(ConfigError, match="unknown method"):
        mm.tl.fit_expression(cohort, "top:3", method="svm", use_rep="X_morph")
    with pytest.raises(ConfigError, match="unknown parameter"):
        mm.tl.fit_expression(cohort, "top:3", use_rep="X_morph", params={"alhpa": 1.0})
    with pytest.raises(ConfigError, match="gated"):
        mm.tl.fit_expression(cohort, "top:3", use_rep="X_morph", fusion="gated")


# -- spot tiles ----------------------------------------------------------------------------------
def test_spot_tiles_are_centred_and_sized_by_the_spot_diameter(synth):
    st, slide = synth.samples[0]
    spots = mm.pp.spot_tiles(st, slide, diameter_um=55, mpp=4.0)
    spec = spots.uns[K.UNS][K.UNS_SLIDES][slide.slide_id][K.UNS_TILING]
    assert spec["size"] == round(55 / 4.0) and spec["read_size"] == round(55 / 2.0)
    centre = spots.obs[[K.X, K.Y]].to_numpy() + spec["size0"] / 2
    np.testing.assert_allclose(centre, st.obsm[K.SPATIAL], atol=0.5)
    assert list(spots.obs[K.BARCODE]) == list(st.obs_names)
    np.testing.assert_array_equal(spots.X, st.X)
    assert mm.io.read_tiles(slide, spots[:3]).shape == (3, 14, 14, 3)
    moved = st.copy()
    moved.obsm[K.SPATIAL] = moved.obsm[K.SPATIAL] + [slide.dimensions[0], 0]
    with pytest.raises(SlideError, match="100 of 100 spots lie outside"):
        mm.pp.spot_tiles(moved, slide)
    nosf = st.copy()
    del nosf.uns["spatial"]
    with pytest.raises(DataError, match="scale factors"):
        mm.pp.spot_tiles(nosf, slide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mm.pp.spot_tiles(st, slide)  # spots well inside: no edge warning


def test_cli_fit_and_predict(tmp_path):
    import anndata as ad

    from mmpath.cli import main

    data = mm.datasets.synthetic_st(3, grid=8, directory=tmp_path / "img", seed=3)
    argv = [
        "-q",
        "expr",
        "fit",
        "--encoder",
        "morph",
        "--genes",
        "top:6",
        "--folds",
        "3",
        "-o",
        str(tmp_path / "run"),
    ]
    for st, slide in data.samples:
        st.write_h5ad(tmp_path / f"{slide.slide_id}.h5ad")
        argv += ["--st", str(tmp_path / f"{slide.slide_id}.h5ad"), "--slide", slide.path]
    assert main(argv) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "model.safetensors", "scores.csv", "pearson.png"):
        assert (run / name).is_file()
    slide = data.samples[0][1]
    tiles = mm.pp.tile(slide, 28, min_tissue=0.0)
    mm.io.write_h5ad(tiles, tmp_path / "tiles.h5ad")
    gene = ExpressionModel.load(run).genes[0]
    assert (
        main(
            [
                "-q",
                "expr",
                "predict",
                str(tmp_path / "tiles.h5ad"),
                "--model",
                str(run),
                "--heatmap",
                gene,
                "-o",
                str(tmp_path / "pred.h5ad"),
            ]
        )
        == 0
    )
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert pred.shape == (tiles.n_obs, 6) and np.isfinite(pred.X).all()
    assert (tmp_path / f"pred_{gene}.png").is_file()
    assert (
        main(
            [
                "-q",
                "expr",
                "predict",
                str(tmp_path / "tiles.h5ad"),
                "--model",
                str(tmp_path),
                "-o",
                str(tmp_path / "x.h5ad"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize("method", ["mlp", pytest.param("contrastive", marks=pytest.mark.slow)])
def test_heads_train_through_the_shared_training_core(cohort, synth, tmp_path, method):
    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    table = tmp_path / "spots.h5ad"
    mm.io.write_h5ad(cohort, table)
    spec = get_task("expr")
    cfg = load_config(
        spec.config,
        None,
        [
            f"out={tmp_path / 'run'}",
            f"data.table={table}",
            "data.genes=all",
            "data.use_rep=X_morph",
            f"model.method={method}",
            "train.epochs=8",
            "train.batch_size=128",
            "train.quiet=true",
        ],
    )
    result = fit(spec.build, cfg)
    assert len(result.losses) == 8 * (cohort.n_obs // 128)  # whole batches per epoch
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4])
    pred = mm.tl.predict_expression(cohort, result.model_dir)
    assert pred.shape == (cohort.n_obs, cohort.n_vars)
    r = pd.Series(
        pearson_per_gene(
            np.log1p(cohort.X / cohort.X.sum(1, keepdims=True) * 1e4)[
                :, cohort.var_names.get_indexer(pred.var_names)
            ],
            pred.X,
        ),
        index=pred.var_names,
    )
    assert r[synth.morph_genes].mean() > r[synth.noise_genes].mean() + 0.3
