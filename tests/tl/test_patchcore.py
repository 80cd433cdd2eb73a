"""PatchCore: patch features + 3x3 aggregation + coreset bank; max patch distance scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmpath as mm
from mmpath.datasets.synthetic_seg import make_anomaly_tiles
from mmpath.errors import DataError
from mmpath.tl.patchcore import PatchCore


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _small_defects(n: int, seed: int):
    """Normal 64 px tiles; half get one small (10x10 px, 2.4% of the tile) blue-ink defect."""
    images, _ = make_anomaly_tiles(n, 64, seed=seed)
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, bool)
    labels[: n // 2] = True
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, 50, 2)
        images[i, y : y + 10, x : x + 10] = (40, 70, 190)
    return images, labels


def test_scores_equal_brute_force_with_leave_one_out():
    pc = PatchCore("tiny_vit", coreset=1.0, k=2)
    normal, _ = make_anomaly_tiles(4, 32, seed=1)
    feats = pc.features(normal)
    n, h, w, c = feats.shape
    pc.fit(None, features=feats)
    bank_ids = np.arange(4)
    scores, maps = pc.score(features=feats, bank_ids=bank_ids)
    flat = feats.reshape(n, h * w, c)
    for i in range(n):
        others = np.concatenate([flat[j] for j in range(n) if j != i])
        d = np.sqrt(((flat[i][:, None] - others[None]) ** 2).sum(-1))
        ref = np.sort(d, 1)[:, :2].mean(1).reshape(h, w)
        np.testing.assert_allclose(maps[i], ref, rtol=1e-4, atol=1e-4)
        assert scores[i] == pytest.approx(ref.max(), rel=1e-4)
    with pytest.raises(DataError, match="no memory bank"):
        PatchCore("tiny_vit").score(normal)
    with pytest.raises(DataError, match="coreset"):
        PatchCore("tiny_vit", coreset=0)
    with pytest.raises(DataError, match="odd size"):
        PatchCore("tiny_vit", neighbourhood=2)
    # 3x3 aggregation is the mean of each patch's 3x3 neighbourhood (edges: valid cells only)
    raw = PatchCore(pc.encoder, neighbourhood=1).features(normal[:1])[0]
    agg = PatchCore(pc.encoder, neighbourhood=3).features(normal[:1])[0]
    np.testing.assert_allclose(
        agg[1, 1], raw[:3, :3].reshape(-1, raw.shape[-1]).mean(0), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        agg[0, 0], raw[:2, :2].reshape(-1, raw.shape[-1]).mean(0), rtol=1e-4, atol=1e-5
    )


def test_patchcore_finds_small_defects_that_pooled_knn_dilutes():
    normal, _ = make_anomaly_tiles(40, 64, seed=0)
    test, labels = _small_defects(30, seed=5)
    pc = PatchCore("mmpath-demo-vit", coreset=0.25).fit(normal)
    assert pc.indices == [2, 3]  # the middle blocks of the 6-block demo ViT
    assert len(pc.bank) == int(np.ceil(0.25 * 40 * 49))
    scores, maps = pc.score(test)
    auroc = mm.metrics.anomaly_metrics(scores, labels)["auroc"]
    # pooled kNN on the same encoder's embedding, same bank tiles
    enc = pc.encoder
    x = torch.from_numpy(np.concatenate([normal, test])).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(112, 112), mode="bilinear", antialias=True)
    with torch.no_grad():
        e = enc.encode_image((x - 0.5) / 0.5).features.numpy()
    bank, q = e[:40], e[40:]
    pooled = np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1)).min(1)
    auroc_pooled = mm.metrics.anomaly_metrics(pooled, labels)["auroc"]
    assert auroc > 0.95 and auroc > auroc_pooled + 0.05, (auroc, auroc_pooled)
    # the hottest patch sits on the defect
    assert maps.shape == (30, 7, 7)


def test_anomaly_patchcore_on_a_tile_table():
    images, labels = _small_defects(8, seed=3)
    normal, _ = make_anomaly_tiles(16, 64, seed=9)
    allimgs = np.concatenate([normal, images])
    slide = mm.io.ArraySlide(np.concatenate(list(allimgs), 1), mpp=0.5)
    tiles = mm.pp.tile(slide, 64, min_tissue=0)
    order = (tiles.obs["x"] // 64).to_numpy()
    is_normal = order < 16
    tiles.obs["is_normal"] = is_normal
    mm.tl.anomaly_patchcore(tiles, "mmpath-demo-vit", normal="is_normal", slide=slide)
    s = tiles.obs["anomaly_patchcore_score"].to_numpy()
    truth = np.r_[np.zeros(16, bool), labels][order]
    assert mm.metrics.anomaly_metrics(s[~is_normal], truth[~is_normal])["auroc"] > 0.9
    rec = tiles.uns["mmpath"]["anomaly"]["anomaly_patchcore"]
    assert rec["method"] == "patchcore" and rec["bank_patches"] == int(np.ceil(0.1 * 16 * 49))
    with pytest.raises(DataError, match="obs has no column"):
        mm.tl.anomaly_patchcore(tiles, normal="missing", slide=slide)


def test_cli_anomaly_patchcore(tmp_path, capsys):
    from PIL import Image

    from mmpath.cli import main

    images, labels = _small_defects(8, seed=3)
    normal, _ = make_anomaly_tiles(12, 64, seed=9)
    Image.fromarray(np.concatenate([*normal, *images], 1)).save(tmp_path / "m.png")
    tiles = mm.pp.tile(mm.io.open_slide(tmp_path / "m.png", mpp=0.5), 64, min_tissue=0)
    col = (tiles.obs["x"] // 64).to_numpy()
    tiles.obs["is_normal"] = col < 12
    tiles.obs["defect"] = np.r_[np.zeros(12, bool), labels][col]
    mm.io.write_h5ad(tiles, tmp_path / "t.h5ad")
    argv = ["-q", "anomaly", str(tmp_path / "t.h5ad"), "--patchcore", "mmpath-demo-vit"]
    rc = main([*argv, "--normal", "is_normal", "--label", "defect", "--no-heatmap"])
    assert rc == 0
    assert "AUROC" in capsys.readouterr().out
    back = mm.io.read_h5ad(tmp_path / "t.h5ad")
    s = back.obs["anomaly_patchcore_score"].to_numpy()
    assert s[back.obs["defect"].to_numpy()].min() > np.median(s[~back.obs["defect"].to_numpy()])
    assert main(["-q", "anomaly", str(tmp_path / "t.h5ad"), "--patchcore", "no-such-model"]) == 2
