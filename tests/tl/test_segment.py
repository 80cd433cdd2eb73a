"""Segmentation: metrics vs sklearn, baselines, training beats Otsu, seamless whole-slide
inference, table outputs and exports, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score
from torch import nn

import mmpath as mm
from mmpath import _keys as K
from mmpath.datasets.seg_pairs import check_pairs, load_seg_pairs
from mmpath.datasets.synthetic_seg import make_seg_images
from mmpath.errors import DataError, ModelError
from mmpath.models.heads import TrainedHead, VAEHead, load_trained_head, save_trained_head
from mmpath.tl._blend import grid_starts, tile_window
from mmpath.tl.seg_baselines import baseline_segment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/models/test_heads.py
    yield
    torch.set_num_threads(n)


class ConvNet(nn.Module):
    """Three 3x3 convolutions: receptive-field radius 3."""

    n_prob_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(6, 3, 3, padding=1),
        )

    def predict_proba(self, x):
        return torch.softmax(self.net(x), 1)


class DarkIsForeground(nn.Module):
    """A per-pixel 'model': class 1 where the grey level is dark (exact on colour images)."""

    n_prob_classes = 2

    def predict_proba(self, x):
        p = torch.sigmoid(60 * (0.55 - x.mean(1, keepdim=True)))
        return torch.cat([1 - p, p], 1)


# -- metrics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_dice_jaccard_equal_sklearn_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    C = 4
    n_present = [3, 4, 2, 1][seed]  # seeds 0, 2, 3 leave classes empty in both masks
    target = [rng.integers(0, n_present, (12, 9)) for _ in range(3)]
    pred = [rng.integers(0, n_present, (12, 9)) for _ in range(3)]
    table = mm.metrics.dice_jaccard(pred, target, C)
    t = np.concatenate([m.ravel() for m in target])
    p = np.concatenate([m.ravel() for m in pred])
    kw = dict(labels=list(range(C)), zero_division=1.0)
    np.testing.assert_allclose(table["dice"].to_numpy()[:C], f1_score(t, p, average=None, **kw))
    np.testing.assert_allclose(
        table["jaccard"].to_numpy()[:C], jaccard_score(t, p, average=None, **kw)
    )
    assert table.loc["mean", "dice"] == pytest.approx(f1_score(t, p, average="macro", **kw))
    assert table.loc["mean", "jaccard"] == pytest.approx(jaccard_score(t, p, average="macro", **kw))


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), np.uint8)
    table = mm.metrics.dice_jaccard(empty, empty, 2)
    assert table.loc["1", "dice"] == 1.0 and table.loc["1", "jaccard"] == 1.0  # 0/0 -> 1
    ref = f1_score(empty.ravel(), empty.ravel(), zero_division=1.0)
    assert ref == table.loc["1", "dice"]
    # predicting something where nothing is: 0; ignore_empty drops empty classes from the mean
    pred = empty.copy()
    pred[:2] = 1
    assert mm.metrics.dice_jaccard(pred, empty, 2).loc["1", "dice"] == 0.0
    t3 = mm.metrics.dice_jaccard(empty, empty, 3, ignore_empty=True)
    assert t3.loc["mean", "dice"] == 1.0 and t3.loc["2", "tp"] == 0


def test_metric_errors():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(DataError, match="shape"):
        mm.metrics.dice_jaccard(a, np.zeros((4, 5), np.uint8), 2)
    with pytest.raises(DataError, match=r"outside the class set 0\.\.1"):
        mm.metrics.dice_jaccard(a, a + 2, 2)


# -- data checks ------------------------------------------------------------------------------
def test_pairs_errors(tmp_path):
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(DataError, match="mask #1 is 7x8 px but its image is 8x8 px"):
        check_pairs(list(imgs), [np.zeros((8, 8)), np.zeros((8, 7))], 2)
    bad = np.zeros((2, 8, 8), np.uint8)
    bad[1, 0, 0] = 5
    np.savez(tmp_path / "d.npz", images=imgs, masks=bad)
    with pytest.raises(DataError, match=r"label value\(s\) \[5\] outside the class set 0\.\.2"):
        load_seg_pairs(tmp_path / "d.npz", 3)
    bad[1, 0, 0] = 255
    np.savez(tmp_path / "d.npz", images=imgs, masks=bad)
    assert len(load_seg_pairs(tmp_path / "d.npz", 3, ignore_index=255).images) == 2


def test_synthetic_texture_defeats_otsu_but_colour_does_not():
    tex = make_seg_images(12, 48, kind="texture")
    col = make_seg_images(12, 48, kind="colour")
    d_tex = mm.metrics.dice_jaccard(list(baseline_segment(tex.images)), list(tex.masks), 2)
    d_col = mm.metrics.dice_jaccard(list(baseline_segment(col.images)), list(col.masks), 2)
    assert d_tex.loc["1", "dice"] < 0.5 < 0.95 < d_col.loc["1", "dice"]
    for method in ("edge", "region_growing"):
        d = mm.metrics.dice_jaccard(list(baseline_segment(col.images, method)), list(col.masks), 2)
        assert d.loc["1", "dice"] > 0.6, method
    # per pixel the two regions have the same colours: same mean grey level
    grey = tex.images.mean(-1)
    assert abs(grey[tex.masks == 1].mean() - grey[tex.masks == 0].mean()) < 3


@pytest.fixture(scope="module")
def trained_seg(tmp_path_factory):
    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    out = tmp_path_factory.mktemp("runs") / "seg"
    spec = get_task("seg")
    cfg = load_config(
        spec.config,
        CONFIGS / "seg-tiny.yaml",
        [
            f"out={out}",
            "train.epochs=8",
            "train.quiet=true",
            "train.val_every_epochs=0",
        ],
    )
    return fit(spec.build, cfg)


def test_short_training_beats_otsu_on_texture(trained_seg):
    head = load_trained_head(trained_seg.run_dir, kind="seg")
    test = make_seg_images(16, 32, kind="texture", seed=123)
    mean = torch.tensor(head.mean).view(1, 3, 1, 1)
    std = torch.tensor(head.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        pred = head.model.predict_proba(x).argmax(1).numpy()
    ours = mm.metrics.dice_jaccard(list(pred), list(test.masks), 2).loc["1", "dice"]
    otsu = mm.metrics.dice_jaccard(list(baseline_segment(test.images)), list(test.masks), 2)
    assert ours > 0.75
    assert ours > otsu.loc["1", "dice"] + 0.4


# -- whole-slide inference --------------------------------------------------------------------
@pytest.mark.parametrize("length,tile,overlap,margin", [(48 + 3 * 32, 48, 16, 4), (100, 32, 8, 0)])
def test_blend_weights_sum_to_one(length, tile, overlap, margin):
    starts = grid_starts(length, tile, tile - overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    raw = np.zeros((length, length))
    for y in starts:
        for x in starts:
            edges = (x == starts[0], x == starts[-1], y == starts[0], y == starts[-1])
            raw[y : y + tile, x : x + tile] += tile_window(tile, overlap, margin, edges=edges)
    assert raw.min() > 0
    if (length - tile) % (tile - overlap) == 0:  # a regular grid: a partition of unity as is
        np.testing.assert_allclose(raw, 1.0, atol=1e-6)
    # and the blended output of a constant model is that constant everywhere
    const = TrainedHead("seg", _Const(), ("a", "b"), tile_size=tile)
    res = mm.tl.segment_slide(
        mm.io.ArraySlide(np.zeros((length, length, 3), np.uint8)),
        const,
        overlap=overlap,
        margin=margin,
        return_probs=True,
    )
    np.testing.assert_allclose(res.probs[1], 0.3, atol=1e-6)


class _Const(nn.Module):
    n_prob_classes = 2

    def predict_proba(self, x):
        p = torch.full_like(x[:, :1], 0.3)
        return torch.cat([1 - p, p], 1)


def test_bounded_receptive_field_tiled_equals_single_pass():
    torch.manual_seed(0)
    model = ConvNet().eval()
    img = make_seg_images(1, 150, kind="multiclass").images[0][:, :130]
    head = TrainedHead("seg", model, ("a", "b", "c"), tile_size=48)
    slide = mm.io.ArraySlide(img, mpp=0.5)
    # the single pass sees the image with 3 px of mirrored context, as the tiles' border does
    mirrored = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="reflect")
    with torch.no_grad():
        full = model.predict_proba(torch.from_numpy(mirrored).permute(2, 0, 1)[None].float() / 255)
    full = full[0].numpy()[:, 3:-3, 3:-3]
    tiled = mm.tl.segment_slide(slide, head, overlap=16, margin=3, return_probs=True)
    np.testing.assert_allclose(tiled.probs, full, atol=1e-5)  # borders included
    np.testing.assert_array_equal(tiled.mask, full.argmax(0))
    interior = (slice(None), slice(3, -3), slice(3, -3))
    # without the margin the tile borders' padding leaks in: the check can fail
    naive = mm.tl.segment_slide(slide, head, overlap=16, margin=0, return_probs=True)
    assert np.abs(naive.probs[interior] - full[interior]).max() > 1e-3


def _seam_stats(probs: np.ndarray, starts: list[int], tile: int) -> tuple[float, float]:
    """Mean |jump| between adjacent pixels across tile edges vs elsewhere (both axes)."""
    seams = sorted({s - 1 for s in starts[1:]} | {s + tile - 1 for s in starts[:-1]})
    jumps, inside = [], []
    p = probs[1]
    for diff in (np.abs(np.diff(p, axis=1)).mean(0), np.abs(np.diff(p, axis=0)).mean(1)):
        jumps.append(diff[seams])
        inside.append(diff[np.setdiff1d(np.arange(diff.size), seams)])
    return float(np.concatenate(jumps).mean()), float(np.concatenate(inside).mean())


class _EdgeArtefact(nn.Module):
    """A model whose outer row/column of every input is wrong (as a U-Net's can be: the
    demo's flagged its last row), right (class 0 at 0.9) everywhere else."""

    n_prob_classes = 2

    def predict_proba(self, x):
        p = torch.full_like(x[:, :1], 0.1)
        for sl in ((..., 0, slice(None)), (..., -1, slice(None)), (..., 0), (..., -1)):
            p[sl] = 0.9
        return torch.cat([1 - p, p], 1)


@pytest.mark.parametrize("shape", [(150, 130), (61, 200)])
def test_last_row_and_column_behave_like_the_interior(shape):
    """Whole-slide inference gives border pixels the same context as interior ones: mirrored
    pixels beyond the image, so no image pixel is predicted from a tile's outer row."""
    head = TrainedHead("seg", _EdgeArtefact(), ("glass", "x"), tile_size=32)
    slide = mm.io.ArraySlide(np.full((*shape, 3), 200, np.uint8), mpp=0.5)
    res = mm.tl.segment_slide(slide, head, overlap=8, margin=2, return_probs=True)
    p = res.probs[1]
    assert p.shape == shape
    for edge in (p[-1], p[:, -1], p[0], p[:, 0]):
        np.testing.assert_allclose(edge, p[1:-1, 1:-1].mean(), atol=1e-6)
    np.testing.assert_allclose(p, 0.1, atol=1e-6)
    assert (res.mask == 0).all()
    # the mirrored context is the image's own pixels: a gradient stays a gradient
    from mmpath.tl.segment import _pad_tile

    a = np.arange(12, dtype=np.uint8).reshape(3, 4, 1).repeat(3, 2)
    out = _pad_tile(a, (2, 3), (1, 0), 2)
    assert out.shape == (8, 5, 3)
    np.testing.assert_array_equal(out[:2, 1:, 0], a[[2, 1], :, 0])  # mirrored rows
    assert (out[-1] == 255).all()  # beyond the mirror: white


def test_vit_unet_has_no_seams(trained_seg):
    head = load_trained_head(trained_seg.run_dir, kind="seg")  # the ViT U-Net, 32 px tiles
    img = make_seg_images(1, 200, kind="texture", seed=3).images[0]
    slide = mm.io.ArraySlide(img)
    blended = mm.tl.segment_slide(slide, head, overlap=8, margin=2, return_probs=True)
    pad = blended.info["border_context"]  # the grid covers the image grown by 2 px a side
    starts = [s - pad for s in grid_starts(200 + 2 * pad, 32, 24)]
    seam, inside = _seam_stats(blended.probs, starts, 32)
    # 10%: sampling tolerance of a mean over the ~20 seam lines vs ~380 other lines
    assert seam <= 1.1 * inside
    # the same measure flags the seams of plain non-overlapping tiles
    hard = mm.tl.segment_slide(slide, head, overlap=0, return_probs=True)
    seam0, inside0 = _seam_stats(hard.probs, grid_starts(200, 32, 32), 32)
    assert seam0 > 1.5 * inside0


def test_segment_table_fractions_areas_and_exports(tmp_path):
    from PIL import Image

    img = np.full((192, 256, 3), (232, 150, 190), np.uint8)
    img[32:96, 64:192] = (80, 50, 140)  # one dark rectangle: 64 x 128 px
    path = tmp_path / "slide.png"
    Image.fromarray(img).save(path)
    slide = mm.io.open_slide(path, mpp=0.5)
    tiles = mm.pp.tile(slide, 64, min_tissue=0)
    head = TrainedHead("seg", DarkIsForeground(), ("background", "dark"), tile_size=32, mpp=0.5)
    mm.tl.segment(
        tiles,
        head,
        mask_mpp=1.0,
        overlap=8,
        out_dir=tmp_path / "seg",
        formats=("png", "tiff", "geojson"),
    )
    col = "seg_dark_frac"
    x, y = tiles.obs[K.X].to_numpy(), tiles.obs[K.Y].to_numpy()
    ox = np.clip(np.minimum(x + 64, 192) - np.maximum(x, 64), 0, None)
    oy = np.clip(np.minimum(y + 64, 96) - np.maximum(y, 32), 0, None)
    np.testing.assert_allclose(tiles.obs[col].to_numpy(), ox * oy / 64**2, atol=0.02)
    slides = mm.tl.area_table(tiles)
    assert slides.n_obs == 1
    assert slides.obs["dark_area_mm2"].iloc[0] == pytest.approx(64 * 128 * 0.5**2 * 1e-6, rel=0.02)
    stem = tmp_path / "seg" / "slide.seg"
    png = np.asarray(Image.open(f"{stem}.png"))
    assert png.shape == (96, 128) and png[32, 64] == 1 and png[5, 5] == 0
    import tifffile

    assert tifffile.imread(f"{stem}.tif").sum() == png.sum()
    doc = json.loads(Path(f"{stem}.geojson").read_text())
    feat = doc["features"][0]
    assert feat["properties"]["classification"]["name"] == "dark"
    assert feat["properties"]["objectType"] == "annotation"
    ann = mm.io.read_annotations(f"{stem}.geojson", slide=slide)  # QuPath's format, level 0
    (x0, y0, x1, y1) = ann.shapes[0][1].bounds
    assert (x0, y0, x1, y1) == pytest.approx((64, 32, 192, 96), abs=1.0)


def test_geojson_keeps_holes():
    from mmpath.tl._mask_export import mask_to_features

    m = np.zeros((40, 40), np.uint8)
    m[5:35, 5:35] = 1
    m[15:25, 15:25] = 0  # a hole
    m[18:22, 18:22] = 1  # an island inside the hole
    feats = mask_to_features(m, ("bg", "fg"), downsample=2.0, simplify=0)
    from shapely.geometry import shape

    geom = shape(feats[0]["geometry"])
    assert geom.area == pytest.approx((30 * 30 - 10 * 10 + 4 * 4) * 4, rel=0.02)


def test_wrong_model_kind_is_refused(tmp_path):
    vae = VAEHead(image_size=16, latent_dim=4, base_channels=4)
    save_trained_head(TrainedHead("anomaly", vae, (), 16), tmp_path / "vae")
    slide = mm.io.ArraySlide(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ModelError, match="not a segmentation"):
        mm.tl.segment_slide(slide, tmp_path / "vae")


def test_cli_segment(tmp_path, trained_seg, capsys):
    from PIL import Image

    from mmpath.cli import main

    img = make_seg_images(1, 96, kind="texture", seed=9)
    Image.fromarray(img.images[0]).save(tmp_path / "slide.png")
    rc = main(
        [
            "-q",
            "segment",
            str(tmp_path / "slide.png"),
            "--model",
            str(trained_seg.run_dir),
            "-o",
            str(tmp_path / "seg"),
            "--formats",
            "png,tif,geojson",
        ]
    )
    assert rc == 0
    mask = np.asarray(Image.open(tmp_path / "seg" / "slide.png"))
    assert mm.metrics.dice_jaccard(mask, img.masks[0], 2).loc["1", "dice"] > 0.7
    assert (tmp_path / "seg" / "slide.tif").exists()
    assert (tmp_path / "seg" / "slide.geojson").exists()
    assert "textured_fraction" in (tmp_path / "seg" / "areas.csv").read_text()
    rc = main(
        [
            "segment",
            str(tmp_path / "slide.png"),
            "--model",
            str(tmp_path),
            "-o",
            str(tmp_path / "x"),
        ]
    )
    assert rc == 2 and "not a segmentation (U-Net) model folder" in capsys.readouterr().err


def test_segment_pyramid_at_coarse_mpp(synthetic_slide):
    """Level choice + resampling on a real openslide pyramid, then a coarser mask grid."""
    from mmpath.io._lowres import read_downsampled

    head = TrainedHead("seg", DarkIsForeground(), ("background", "dark"), tile_size=32, mpp=0.5)
    fine = mm.tl.segment_slide(synthetic_slide, head, mpp=4.0, overlap=8, return_probs=True)
    assert fine.mpp == pytest.approx(4.0, rel=0.02) and fine.downsample == pytest.approx(8.0)
    # the same per-pixel model on the slide read whole at 4 µm/px
    img = read_downsampled(synthetic_slide, fine.downsample)[
        : fine.mask.shape[0], : fine.mask.shape[1]
    ]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    truth = DarkIsForeground().predict_proba(x)[0, 1].numpy() > 0.5
    assert truth.mean() > 0.01
    dice = mm.metrics.dice_jaccard(
        fine.mask[: truth.shape[0], : truth.shape[1]], truth.astype(np.uint8), 2
    )
    assert dice.loc["1", "dice"] > 0.8  # different resampling paths flip small nuclei
    coarse = mm.tl.segment_slide(
        synthetic_slide, head, mpp=4.0, mask_mpp=8.0, overlap=8, return_probs=True
    )
    assert coarse.mpp == pytest.approx(8.0, rel=0.02)
    assert coarse.downsample == pytest.approx(16.0, rel=0.02)
    W, H = synthetic_slide.dimensions
    assert coarse.mask.shape == pytest.approx((H / 16, W / 16), abs=1)
    # the coarse grid area-averages the fine probabilities (2 x 2 blocks)
    h, w = coarse.mask.shape
    pooled = fine.probs[1][: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean((1, 3))
    np.testing.assert_allclose(coarse.probs[1], pooled, atol=1e-5)


def test_training_pairs_from_slide_annotations(tmp_path):
    from PIL import Image

    from mmpath.datasets.seg_pairs import pairs_from_annotations
    from mmpath.train.tasks_seg import SegDataConfig, _seg_data

    img = np.full((128, 192, 3), 230, np.uint8)
    Image.fromarray(img).save(tmp_path / "s.png")
    square = [[[32, 32], [96, 32], [96, 96], [32, 96], [32, 32]]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": square},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
            }
        ],
    }
    (tmp_path / "s.geojson").write_text(json.dumps(doc))
    slide = mm.io.open_slide(tmp_path / "s.png", mpp=0.5)
    pairs, names = pairs_from_annotations(slide, tmp_path / "s.geojson", tile_size=32, mpp=1.0)
    assert names == ("background", "Tumor")
    assert len(pairs.images) == 2 * 3 and pairs.images[0].shape == (32, 32, 3)
    # the square covers level-0 32..96 = 16..48 at 1 µm/px: a quarter of tile (0, 0)
    assert sum(int(m.sum()) for m in pairs.masks) == 32 * 32
    assert pairs.masks[0].mean() == pytest.approx(0.25)
    cfg = SegDataConfig(
        source="annotations",
        slides=(str(tmp_path / "s.png"),),
        annotations=(str(tmp_path / "s.geojson"),),
        tile_size=32,
        min_annotated=0.1,
        val_fraction=0.0,
    )
    ti, tm, vi, _, names = _seg_data(cfg, 0)
    assert names == ("background", "Tumor") and len(ti) == 4 and not vi


def test_slide_thinner_than_a_small_tile_and_bad_arguments():
    torch.manual_seed(0)
    head = TrainedHead("seg", ConvNet().eval(), ("a", "b", "c"), tile_size=48)
    thin = mm.io.ArraySlide(np.full((5, 200, 3), 200, np.uint8), mpp=0.5)  # 5 px < 8 px
    res = mm.tl.segment_slide(thin, head)
    assert res.mask.shape == (5, 200) and res.downsample == 1.0
    for kwargs, match in (
        ({"mask_mpp": 0.0}, "mask_mpp must be > 0"),
        ({"mpp": -1.0}, "mpp must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ):
        with pytest.raises(DataError, match=match):
            mm.tl.segment_slide(thin, head, **kwargs)
