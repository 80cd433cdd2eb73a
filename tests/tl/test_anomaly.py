"""Anomaly scores: a VAE trained on normal tiles, the kNN baseline, metrics, table outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

import mmpath as mm
from mmpath.datasets.synthetic_seg import make_anomaly_tiles
from mmpath.errors import DataError, ModelError
from mmpath.models.heads import TrainedHead, UNetHead, load_trained_head, save_trained_head

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/models/test_heads.py
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    out = tmp_path_factory.mktemp("runs") / "vae"
    spec = get_task("anomaly")
    cfg = load_config(
        spec.config,
        CONFIGS / "vae-tiny.yaml",
        [
            f"out={out}",
            "train.epochs=4",
            "train.quiet=true",
            "train.val_every_epochs=0",
        ],
    )
    return fit(spec.build, cfg)


def test_vae_trained_on_normal_tiles_ranks_anomalies_higher(trained_vae):
    head = load_trained_head(trained_vae.run_dir, kind="anomaly")
    images, labels = make_anomaly_tiles(40, 32, anomalous=0.5, seed=77)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    scores = head.model.anomaly(x)
    res = mm.metrics.anomaly_metrics(scores.recon_error.numpy(), labels)
    assert res["auroc"] > 0.9
    # the error map points at the anomaly: ink/debris pixels reconstruct worst
    err = scores.error_map.numpy()
    dark_or_blue = images[..., 0] < 100  # pink tissue has red > 200; ink/debris do not
    assert err[dark_or_blue].mean() > 5 * err[~dark_or_blue].mean()


def test_anomaly_metrics_equal_sklearn_and_errors():
    rng = np.random.default_rng(0)
    y = rng.random(50) < 0.3
    s = rng.random(50) + y
    res = mm.metrics.anomaly_metrics(s, y)
    assert res["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert res["auprc"] == pytest.approx(average_precision_score(y, s))
    assert res["n_anomalous"] == int(y.sum())
    with pytest.raises(DataError, match="both normal and anomalous"):
        mm.metrics.anomaly_metrics(s, np.zeros(50, bool))
    with pytest.raises(DataError, match="0/1"):
        mm.metrics.anomaly_metrics(s, np.full(50, 2))


def _embedded_table(n_normal=60, n_anom=15, dim=8, seed=0):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (n_normal, dim)), rng.normal(4, 1, (n_anom, dim))])
    normal = np.r_[np.ones(n_normal, bool), np.zeros(n_anom, bool)]
    obs = pd.DataFrame(
        {"slide_id": pd.Categorical(["s"] * len(X)), "is_normal": normal},
        index=[f"s:{i}" for i in range(len(X))],
    )
    table = ad.AnnData(obs=obs)
    table.obsm["X_enc"] = X.astype(np.float32)
    return table


def test_knn_baseline_matches_brute_force_and_separates():
    t = _embedded_table()
    mm.tl.anomaly_knn(t, use_rep="X_enc", normal="is_normal", k=2)
    X = t.obsm["X_enc"]
    bank = X[t.obs["is_normal"].to_numpy()]
    nn_ = NearestNeighbors(n_neighbors=3).fit(bank)
    d, _ = nn_.kneighbors(X)
    normal = t.obs["is_normal"].to_numpy()
    ref = np.where(normal, d[:, 1:3].mean(1), d[:, :2].mean(1))  # bank tiles: leave-one-out
    np.testing.assert_allclose(t.obs["anomaly_knn_score"], ref, rtol=1e-4, atol=1e-4)
    assert (t.obs["anomaly_knn_score"] > 0).all()
    res = mm.metrics.anomaly_metrics(t.obs["anomaly_knn_score"], ~normal)
    assert res["auroc"] > 0.99
    rec = t.uns["mmpath"]["anomaly"]["anomaly_knn"]
    assert rec["bank_size"] == 60 and rec["k"] == 2
    # a greedy k-centre coreset keeps a tenth of the bank and still separates
    mm.tl.anomaly_knn(t, use_rep="X_enc", normal="is_normal", coreset=0.1, key_added="core")
    assert t.uns["mmpath"]["anomaly"]["core"]["bank_size"] == 6
    assert mm.metrics.anomaly_metrics(t.obs["core_score"], ~normal)["auroc"] > 0.95
    with pytest.raises(DataError, match="obsm has no"):
        mm.tl.anomaly_knn(t, use_rep="X_missing")


def test_anomaly_on_tile_table_writes_scores_and_maps(tmp_path, trained_vae):
    from PIL import Image

    tiles_img, labels = make_anomaly_tiles(8, 32, anomalous=0.5, seed=3)
    mosaic = np.concatenate(
        [np.concatenate(list(tiles_img[r * 4 : r * 4 + 4]), 1) for r in range(2)], 0
    )  # 64 x 128 px, 2 x 4 tiles
    path = tmp_path / "mosaic.png"
    Image.fromarray(mosaic).save(path)
    slide = mm.io.open_slide(path, mpp=0.5)
    tiles = mm.pp.tile(slide, 32, min_tissue=0)
    assert tiles.n_obs == 8
    mm.tl.anomaly(tiles, trained_vae.run_dir, error_maps=tmp_path / "maps.npz")
    order = (tiles.obs["y"] // 32 * 4 + tiles.obs["x"] // 32).to_numpy()
    res = mm.metrics.anomaly_metrics(tiles.obs["anomaly_score"], labels[order])
    assert res["auroc"] == 1.0
    assert "anomaly_latent_nll" in tiles.obs
    maps = np.load(tmp_path / "maps.npz")
    assert maps["maps"].shape == (8, 32, 32)
    assert list(maps["obs_names"]) == list(tiles.obs_names)
    # a segmentation folder is refused
    enc = mm.models.create_encoder("tiny_vit")
    unet = UNetHead(enc, decoder_channels=4, stem_channels=4, input_size=32)
    save_trained_head(TrainedHead("seg", unet, ("a", "b"), 32), tmp_path / "seg")
    with pytest.raises(ModelError, match="not an anomaly"):
        mm.tl.anomaly(tiles, tmp_path / "seg")


def test_cli_anomaly_knn_with_labels(tmp_path, capsys):
    from mmpath.cli import main

    t = _embedded_table()
    t.obs["anomalous"] = ~t.obs["is_normal"]
    mm.io.write_h5ad(t, tmp_path / "t.h5ad")
    rc = main(
        [
            "-q",
            "anomaly",
            str(tmp_path / "t.h5ad"),
            "--use-rep",
            "X_enc",
            "--normal",
            "is_normal",
            "--label",
            "anomalous",
            "--no-heatmap",
        ]
    )
    assert rc == 0
    assert "AUROC 1.000" in capsys.readouterr().out
    back = mm.io.read_h5ad(tmp_path / "t.h5ad")
    assert "anomaly_knn_score" in back.obs


def test_knn_refuses_nan_embeddings():
    t = _embedded_table()
    t.obsm["X_enc"][3, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        mm.tl.anomaly_knn(t, use_rep="X_enc", normal="is_normal")
    assert "anomaly_knn_score" not in t.obs


@pytest.mark.parametrize(
    ("labels", "match"),
    [(["tumour", "normal"], "must be 0/1"), ([1, 1], "both normal and anomalous")],
)
def test_cli_anomaly_checks_labels_before_scoring(tmp_path, capsys, labels, match):
    from mmpath.cli import main

    t = _embedded_table()
    t.obs["lab"] = np.resize(np.asarray(labels), t.n_obs)
    mm.io.write_h5ad(t, tmp_path / "t.h5ad")
    out = tmp_path / "out"
    argv = ["-q", "anomaly", str(tmp_path / "t.h5ad"), "--use-rep", "X_enc", "--label", "lab"]
    assert main([*argv, "--no-heatmap", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--label 'lab'" in err and match in err and "\n" not in err
    assert not list(out.iterdir())  # nothing scored, nothing written


def test_cli_anomaly_remaps_moved_slides(tmp_path, trained_vae, capsys):
    from PIL import Image

    from mmpath.cli import main

    tiles_img, _ = make_anomaly_tiles(4, 32, anomalous=0.5, seed=5)
    (tmp_path / "old").mkdir()
    Image.fromarray(np.concatenate(list(tiles_img), 1)).save(tmp_path / "old" / "m.png")
    tiles = mm.pp.tile(mm.io.open_slide(tmp_path / "old" / "m.png", mpp=0.5), 32, min_tissue=0)
    mm.io.write_h5ad(tiles, tmp_path / "t.h5ad")
    (tmp_path / "old").rename(tmp_path / "new")  # the archive moved after tiling
    argv = ["-q", "anomaly", str(tmp_path / "t.h5ad"), "--model", str(trained_vae.run_dir)]
    assert main([*argv, "-o", str(tmp_path / "a")]) == 2
    assert "--remap OLD=NEW" in capsys.readouterr().err
    remap = f"{tmp_path / 'old'}={tmp_path / 'new'}"
    assert main([*argv, "-o", str(tmp_path / "b"), "--remap", remap]) == 0
    scored = mm.io.read_h5ad(tmp_path / "b" / "t.h5ad")
    assert scored.obs["anomaly_score"].notna().all() and (scored.obs["anomaly_score"] > 0).all()
    assert (tmp_path / "b" / "m.anomaly.png").is_file()  # the heatmap found the slide too


def test_png_complexity_orders_flat_smooth_and_noisy_tiles():
    from mmpath.tl._complexity import png_bits_per_pixel

    rng = np.random.default_rng(0)
    flat = np.full((32, 32, 3), 200, np.uint8)
    noisy = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    normal, _ = make_anomaly_tiles(4, 32, seed=0)
    bpp = png_bits_per_pixel(np.stack([flat, normal[0], noisy]))
    assert bpp[0] < 1 < bpp[1] < bpp[2] and bpp[2] > 20  # random bytes do not compress
    assert png_bits_per_pixel(flat).shape == (1,)
    with pytest.raises(ValueError, match="uint8"):
        png_bits_per_pixel(flat.astype(np.float32))


def test_complexity_calibration_equals_scipy_and_round_trips():
    from scipy.spatial.distance import mahalanobis

    from mmpath.tl._complexity import ComplexityCalibration

    rng = np.random.default_rng(1)
    c = rng.normal(16, 0.5, 200)
    e = np.exp(-9.5 + 0.25 * c + rng.normal(0, 0.05, 200))
    cal = ComplexityCalibration.fit(e, c)
    assert cal.slope == pytest.approx(np.polyfit(c, np.log(e), 1)[0], rel=1e-6)
    resid = cal.corrected(e, c)
    np.testing.assert_allclose(
        resid, np.log(e) - np.polyval(np.polyfit(c, np.log(e), 1), c), atol=1e-5
    )
    # where the residual is positive the default score IS the Mahalanobis distance of
    # (log error, complexity); where negative only the complexity term remains
    f = np.c_[np.log(e), c]
    vi = np.linalg.inv(np.cov(f.T))
    ref = np.array([mahalanobis(row, f.mean(0), vi) for row in f])
    t = cal.typicality(e, c)
    pos = resid > 0
    np.testing.assert_allclose(t[pos], ref[pos], rtol=1e-3)
    np.testing.assert_allclose(t[~pos], np.abs(c[~pos] - c.mean()) / c.std(ddof=1), rtol=1e-3)
    assert ComplexityCalibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="at least 3"):
        ComplexityCalibration.fit(e[:2], c[:2])


@pytest.mark.parametrize("kind", ["simple", "busy", "ink"])
def test_default_score_works_when_anomalies_are_simpler_or_busier(trained_vae, kind):
    """Raw reconstruction error is inverted on simpler anomalies; the default score is not."""
    from mmpath.tl._complexity import ComplexityCalibration, vae_scores

    head = load_trained_head(trained_vae.run_dir, kind="anomaly")
    cal = ComplexityCalibration.from_dict(head.extra["complexity"])
    assert cal.n == 128  # fitted on the normal training tiles at export
    images, labels = make_anomaly_tiles(60, 32, anomalous=0.5, seed=77, kind=kind)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    s = vae_scores(head.model.eval(), x, cal)
    auroc = {
        k: mm.metrics.anomaly_metrics(s[k], labels)["auroc"] for k in ("recon_error", "typicality")
    }
    assert auroc["typicality"] > 0.95, auroc  # measured 1.00 for all three kinds
    if kind == "simple":  # the input-complexity failure this score corrects
        assert auroc["recon_error"] < 0.2, auroc  # measured 0.00
        assert (s["complexity"][labels].mean() + 3) < s["complexity"][~labels].mean()
    if kind == "busy":
        assert s["complexity"][labels].mean() > s["complexity"][~labels].mean() + 3


def test_anomaly_table_columns_and_uncalibrated_model_warns(tmp_path, trained_vae, caplog):
    from mmpath.tl._complexity import ComplexityCalibration

    images, _ = make_anomaly_tiles(4, 32, anomalous=0.5, seed=5, kind="simple")
    slide = mm.io.ArraySlide(np.concatenate(list(images), 1), mpp=0.5)
    tiles = mm.pp.tile(slide, 32, min_tissue=0)
    mm.tl.anomaly(tiles, trained_vae.run_dir, slide=slide)
    obs = tiles.obs
    for col in ("score", "recon_error", "latent_nll", "complexity", "corrected"):
        assert np.isfinite(obs[f"anomaly_{col}"]).all(), col
    head = load_trained_head(trained_vae.run_dir, kind="anomaly")
    cal = ComplexityCalibration.from_dict(head.extra["complexity"])
    np.testing.assert_allclose(
        obs["anomaly_score"], cal.typicality(obs["anomaly_recon_error"], obs["anomaly_complexity"])
    )
    assert tiles.uns["mmpath"]["anomaly"]["anomaly"]["score"] == "typicality"
    head.extra = {}  # a model folder from before the calibration existed
    with caplog.at_level("WARNING"):
        mm.tl.anomaly(tiles, head, slide=slide, key_added="old")
    assert "no complexity calibration" in caplog.text
    np.testing.assert_array_equal(tiles.obs["old_score"], tiles.obs["old_recon_error"])
    assert "old_corrected" not in tiles.obs
