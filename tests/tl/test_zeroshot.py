"""Zero-shot classification: an aligned toy model on colour tiles, where the answer is known."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import DataError, ModelError
from mmpath.models.base import DataConfig, Encoder, EncoderInfo, ImageEmbedding, Tokens

COLOURS = {"red": (200, 40, 50), "green": (40, 170, 60), "blue": (50, 60, 190)}
TILE = 16


class ColourCLIP(Encoder):
    """Aligned toy image-text model: the joint space is (red, green, blue, other).

    The image tower maps a tile's mean colour (grey removed) to a unit vector; the text tower
    maps colour words to the matching axes plus a small, word-dependent "other" component
    from every non-colour word, so that templates change the text vectors a little.
    """

    def __init__(self, *, logit_scale: float | None = None) -> None:
        super().__init__()
        self.info = EncoderInfo(
            name="colour-clip",
            kind="image-text",
            embed_dim=3,
            proj_dim=4,
            data=DataConfig(input_size=TILE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mpp=None),
            slug="colour_clip",
        )
        self.dummy = torch.nn.Linear(1, 1)  # a parameter so the model has a device
        if logit_scale is not None:
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(logit_scale)))

    def encode_image(self, x: torch.Tensor) -> ImageEmbedding:
        m = x.mean(dim=(2, 3))
        centred = m - m.mean(dim=1, keepdim=True)
        proj = torch.cat([centred, torch.zeros(len(m), 1)], dim=1)
        return ImageEmbedding(m, torch.nn.functional.normalize(proj, dim=-1))

    def tokenize(self, texts) -> Tokens:
        ids = [
            [zlib.crc32(w.strip(".,").encode()) % 997 + 1 for w in t.lower().split()] for t in texts
        ]
        width = max(map(len, ids))
        return Tokens(torch.tensor([row + [0] * (width - len(row)) for row in ids]))

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        axes = {zlib.crc32(c.encode()) % 997 + 1: i for i, c in enumerate(COLOURS)}
        out = torch.zeros(len(tokens.input_ids), 4)
        for r, row in enumerate(tokens.input_ids.tolist()):
            for tok in row:
                if tok in axes:
                    out[r, axes[tok]] += 1.0
                elif tok:
                    out[r, 3] += 0.05 * (tok % 7)
        return torch.nn.functional.normalize(out, dim=-1)


class ImageOnly(Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.info = EncoderInfo(name="img-only", kind="image", embed_dim=3, slug="img_only")


def _colour_slide(slide_id: str, labels: np.ndarray, rng: np.random.Generator, mix=None):
    """An ArraySlide of TILE-px squares whose colours follow ``labels`` (rows x cols).

    Where ``mix`` (rows x cols, a colour index or -1) is set, the tile is 65% its label's
    colour and 35% the ``mix`` colour: still that label, but a less pure example of it.
    """
    rgb = np.asarray(list(COLOURS.values()), float)
    h, w = labels.shape
    img = np.zeros((h * TILE, w * TILE, 3), np.float64)
    for i in range(h):
        for j in range(w):
            base = rgb[labels[i, j]]
            if mix is not None and mix[i, j] >= 0:
                base = 0.65 * base + 0.35 * rgb[mix[i, j]]
            img[i * TILE : (i + 1) * TILE, j * TILE : (j + 1) * TILE] = base
    img += rng.normal(0, 25, img.shape)  # pixel noise: tiles are not pure colours
    return mm.io.ArraySlide(np.clip(img, 0, 255).astype(np.uint8), mpp=0.5, slide_id=slide_id)


def _table(slide, labels: np.ndarray, enc: Encoder):
    """Tile ``slide`` on its colour grid, attach the truth and the model's joint-space vectors."""
    tiles = mm.pp.tile(slide, TILE, min_tissue=0.0, tissue=mm.pp.detect_tissue(slide))
    names = np.asarray(list(COLOURS))
    truth = labels[
        (tiles.obs[K.Y].to_numpy() // TILE).astype(int),
        (tiles.obs[K.X].to_numpy() // TILE).astype(int),
    ]
    tiles.obs["truth"] = names[truth]
    px = mm.io.read_tiles(slide, tiles).astype(np.float32) / 255.0
    with torch.no_grad():
        proj = enc.encode_image(torch.from_numpy(px).permute(0, 3, 1, 2)).proj
    tiles.obsm[K.rep_key("colour_clip", proj=True)] = proj.numpy()
    return tiles


@pytest.fixture()
def enc():
    return ColourCLIP()


@pytest.fixture()
def cohort(enc):
    """Three slides of 8x6 tiles: slide k has pure colour-k tiles, the rest other colours
    mixed with colour k (so colour k is the slide's clearest, MI-Zero's top-k answer)."""
    rng = np.random.default_rng(0)
    tables = []
    for k, sid in enumerate(["s_red", "s_green", "s_blue"]):
        labels = rng.choice(3, size=(6, 8))
        labels[rng.random((6, 8)) < 0.4] = k
        mix = np.where(labels == k, -1, k)
        tables.append(_table(_colour_slide(sid, labels, rng, mix), labels, enc))
    return mm.io.concat(tables)


def test_zero_shot_classifies_colour_tiles(cohort, enc):
    mm.tl.zero_shot(cohort, ["red", "green", "blue"], enc)
    cols = ["zs_red", "zs_green", "zs_blue"]
    assert all(c in cohort.obs for c in cols)
    probs = cohort.obs[cols].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert isinstance(cohort.obs["zs"].dtype, pd.CategoricalDtype)
    assert list(cohort.obs["zs"].cat.categories) == ["red", "green", "blue"]
    acc = float((cohort.obs["zs"].astype(str) == cohort.obs["truth"]).mean())
    assert acc >= 0.9, acc  # chance is 1/3
    run = cohort.uns[K.UNS][K.UNS_RUNS]["zs"]
    assert run["classes"] == ["red", "green", "blue"] and run["columns"] == cols
    assert run["use_rep"] == "X_colour_clip_proj"
    assert run["templates"] == list(mm.tl.DEFAULT_TEMPLATES)
    assert run["logit_scale"] == 100.0 and run["logit_scale_source"] == "default"


def test_template_ensemble_is_renormalised_mean(enc):
    templates = ["an H&E image of {}.", "a histopathology image showing {}.", "{}, H&E."]
    W = mm.tl.class_embeddings(["red", "blue"], enc, templates=templates)
    assert W.shape == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-6)
    for i, name in enumerate(["red", "blue"]):
        with torch.no_grad():
            t = enc.encode_text(enc.tokenize([tp.replace("{}", name) for tp in templates]))
        t = torch.nn.functional.normalize(t, dim=-1).mean(0)
        np.testing.assert_allclose(W[i], (t / t.norm()).numpy(), atol=1e-6)
    single = mm.tl.class_embeddings(["red", "blue"], enc, templates=templates[:1])
    assert not np.allclose(single, W)  # the templates really were ensembled
    syn = mm.tl.class_embeddings(
        {"red": ["red", "crimson"], "blue": "blue"}, enc, templates=templates
    )
    assert not np.allclose(syn[0], W[0]) and np.allclose(syn[1], W[1], atol=1e-6)


def test_slide_table_top_k_pooling(cohort, enc):
    slides = mm.tl.zero_shot(cohort, ["red", "green", "blue"], enc, top_k=5)
    assert list(slides.obs_names) == ["s_red", "s_green", "s_blue"]
    assert list(slides.var_names) == ["red", "green", "blue"]
    assert list(slides.obs["zs"].astype(str)) == ["red", "green", "blue"]
    assert list(slides.obs[K.N_TILES]) == [48, 48, 48]
    np.testing.assert_allclose(slides.X.sum(axis=1), 1.0, atol=1e-5)
    # pooled logits are the mean of the top-5 tile logits of each class (MI-Zero)
    W = mm.tl.class_embeddings(["red", "green", "blue"], enc)
    img = cohort.obsm["X_colour_clip_proj"]
    logits = 100.0 * (img / np.linalg.norm(img, axis=1, keepdims=True)) @ W.T
    for i, sid in enumerate(slides.obs_names):
        rows = logits[cohort.obs[K.SLIDE_ID].to_numpy() == sid]
        want = np.sort(rows, axis=0)[-5:].mean(axis=0)
        np.testing.assert_allclose(slides.layers[K.LOGITS][i], want, rtol=1e-4, atol=1e-3)
    # more tiles asked than a slide has: every tile is pooled
    big = mm.tl.zero_shot(cohort, ["red", "green", "blue"], enc, top_k=10_000)
    rows = logits[cohort.obs[K.SLIDE_ID].to_numpy() == "s_red"]
    np.testing.assert_allclose(big.layers[K.LOGITS][0], rows.mean(axis=0), rtol=1e-4, atol=1e-3)
    assert slides.uns[K.UNS][K.UNS_RUNS]["zs"]["top_k"] == 5
    assert set(slides.uns[K.UNS][K.UNS_SLIDES]) == {"s_red", "s_green", "s_blue"}


def test_zero_shot_is_deterministic_and_round_trips(cohort, enc, tmp_path):
    a, b = cohort.copy(), cohort.copy()
    sa = mm.tl.zero_shot(a, ["red", "green", "blue"], enc)
    sb = mm.tl.zero_shot(b, ["red", "green", "blue"], ColourCLIP())
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(sa.X, sb.X)
    mm.io.write_h5ad(a, tmp_path / "tiles.h5ad")
    mm.io.write_h5ad(sa, tmp_path / "slides.h5ad")
    back = mm.io.read_h5ad(tmp_path / "tiles.h5ad")
    np.testing.assert_array_equal(back.obs["zs_red"].to_numpy(), a.obs["zs_red"].to_numpy())
    assert list(mm.io.read_h5ad(tmp_path / "slides.h5ad").obs["zs"].astype(str)) == [
        "red",
        "green",
        "blue",
    ]


def test_logit_scale_from_model_and_override(cohort):
    enc10 = ColourCLIP(logit_scale=10.0)
    mm.tl.zero_shot(cohort, ["red", "blue"], enc10, key_added="z10")
    run = cohort.uns[K.UNS][K.UNS_RUNS]["z10"]
    assert run["logit_scale"] == pytest.approx(10.0) and run["logit_scale_source"] == "model"
    W = mm.tl.class_embeddings(["red", "blue"], enc10)
    img = cohort.obsm["X_colour_clip_proj"]
    z = 10.0 * (img / np.linalg.norm(img, axis=1, keepdims=True)) @ W.T
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(cohort.obs["z10_red"].to_numpy(), p[:, 0], atol=1e-5)
    mm.tl.zero_shot(cohort, ["red", "blue"], enc10, key_added="z1", logit_scale=1.0)
    assert cohort.obs["z1_red"].std() < cohort.obs["z10_red"].std()  # flatter at lower scale
    assert (cohort.obs["z1"] == cohort.obs["z10"]).all()  # the argmax does not change


def test_rerun_replaces_columns_and_sanitises_names(cohort, enc):
    mm.tl.zero_shot(cohort, ["red", "green", "blue"], enc)
    mm.tl.zero_shot(cohort, ["Red tissue!", "blue"], enc)
    assert "zs_red_tissue" in cohort.obs and "zs_blue" in cohort.obs
    assert "zs_green" not in cohort.obs and "zs_red" not in cohort.obs
    assert K.class_key("zs", " Tumor / stroma ") == "zs_tumor_stroma"


def test_zero_shot_embeds_when_the_projection_is_missing(cohort, enc):
    pytest.importorskip("mmpath.tl.embed")
    ref = cohort.obsm["X_colour_clip_proj"].copy()
    del cohort.obsm["X_colour_clip_proj"]
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=(3, 4))
    slide = _colour_slide("solo", labels, rng)
    one = _table(slide, labels, enc)
    del one.obsm["X_colour_clip_proj"]
    mm.tl.zero_shot(one, ["red", "green", "blue"], enc, slide=slide)
    assert "X_colour_clip_proj" in one.obsm
    assert (one.obs["zs"].astype(str) == one.obs["truth"]).mean() >= 0.9
    assert ref.shape[1] == one.obsm["X_colour_clip_proj"].shape[1]


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ([], "at least two"),
        (["red"], "at least two"),
        ("red;blue", "list of names"),
        (["red", "red"], "twice"),
        (["red", ""], "non-empty"),
        (["red", "?!"], "letters"),
    ],
)
def test_bad_classes(cohort, enc, classes, match):
    with pytest.raises(DataError, match=match):
        mm.tl.zero_shot(cohort, classes, enc)


def test_other_errors(cohort, enc):
    with pytest.raises(ModelError, match="no text tower"):
        mm.tl.zero_shot(cohort, ["red", "blue"], ImageOnly())
    with pytest.raises(DataError, match="no obsm"):
        mm.tl.zero_shot(cohort, ["red", "blue"], enc, use_rep="X_missing")
    cohort.obsm["X_wrong"] = np.ones((cohort.n_obs, 7), np.float32)
    with pytest.raises(DataError, match="7"):
        mm.tl.zero_shot(cohort, ["red", "blue"], enc, use_rep="X_wrong")
    with pytest.raises(DataError, match=r"\{\}"):
        mm.tl.zero_shot(cohort, ["red", "blue"], enc, templates=["an image of"])
    with pytest.raises(DataError, match="top_k"):
        mm.tl.zero_shot(cohort, ["red", "blue"], enc, top_k=0)
    with pytest.raises(DataError, match="empty"):
        mm.tl.zero_shot(cohort[:0].copy(), ["red", "blue"], enc)


def test_cli_zeroshot_with_a_registry_model(synthetic_slide, tmp_path):
    from mmpath.cli import main

    tiles = mm.pp.tile(synthetic_slide, 64, mpp=4.0, min_tissue=0.5)
    path = mm.io.write_h5ad(tiles, tmp_path / "tiles" / "a.h5ad")
    templates = tmp_path / "templates.txt"
    templates.write_text("# prompts\nan H&E image of {}.\n\n{} tissue.\n")
    rc = main(
        [
            "-q",
            "zeroshot",
            str(path),
            "--encoder",
            "tiny_clip",
            "--classes",
            "dense nuclei; stroma ;fat",
            "--templates",
            str(templates),
            "--top-k",
            "3",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    out = mm.io.read_h5ad(tmp_path / "out" / "a.h5ad")
    assert {"zs", "zs_dense_nuclei", "zs_stroma", "zs_fat", "X_tiny_clip_proj"} <= {
        *out.obs,
        *out.obsm,
    }
    np.testing.assert_allclose(
        out.obs[["zs_dense_nuclei", "zs_stroma", "zs_fat"]].sum(1), 1, atol=1e-5
    )
    run = out.uns[K.UNS][K.UNS_RUNS]["zs"]
    assert list(run["templates"]) == ["an H&E image of {}.", "{} tissue."]
    slides = pd.read_csv(tmp_path / "out" / "zs_slides.csv", index_col=0)
    assert list(slides.index) == [tiles.obs[K.SLIDE_ID].iloc[0]]
    assert slides.loc[:, ["dense nuclei", "stroma", "fat"]].sum(1).iloc[0] == pytest.approx(1)
    assert main(["-q", "zeroshot", str(path), "--encoder", "tiny_clip", "--classes", ";"]) == 2
    assert main(["-q", "zeroshot", str(path), "--encoder", "tiny_vit", "--classes", "a;b"]) == 2


def test_damaged_tiles_get_no_score_and_no_vote(cohort, enc):
    ok = np.ones(cohort.n_obs, bool)
    ok[:3] = False  # three tiles of s_red
    blue = cohort.obs[K.SLIDE_ID].to_numpy() == "s_blue"
    ok[blue] = False  # a slide with no readable tile
    cohort.obs[K.TILE_OK] = ok
    slides = mm.tl.zero_shot(cohort, ["red", "green", "blue"], enc)
    assert cohort.obs["zs_red"].isna().sum() == (~ok).sum()
    assert cohort.obs["zs"].isna().sum() == (~ok).sum()
    assert list(slides.obs[K.N_TILES]) == [45, 48, 0]
    assert list(slides.obs["zs"].astype(str)[:2]) == ["red", "green"]
    assert slides.obs["zs"].isna().iloc[2] and np.isnan(slides.X[2]).all()


def test_cli_rerun_on_a_glob_with_the_slide_table_and_an_empty_table(
    synthetic_slide, tmp_path, capsys
):
    """`mmpath zeroshot out/*.h5ad` twice: the run's own zs_slides.h5ad is skipped with a
    warning by every batch verb, and an empty table (a slide without tissue) is skipped too;
    never a traceback."""
    from mmpath.cli import main

    tiles = mm.pp.tile(synthetic_slide, 64, mpp=4.0, min_tissue=0.5)
    a = mm.io.write_h5ad(tiles, tmp_path / "a.h5ad")
    mm.io.write_h5ad(tiles[:0].copy(), tmp_path / "empty.h5ad")
    base = ["-q", "zeroshot", "--encoder", "tiny_clip", "--classes", "a;b"]
    assert main([*base, str(a), str(tmp_path / "empty.h5ad")]) == 0  # empty: skipped, no fail
    assert "empty; skipped" in capsys.readouterr().err
    assert (tmp_path / "zs_slides.h5ad").exists()
    tables = sorted(map(str, tmp_path.glob("*.h5ad")))
    assert main([*base, *tables]) == 0
    assert main(["-q", "embed", "--encoder", "tiny_vit", "--num-workers", "0", *tables]) == 0
    idx = ["-q", "index", "build", *tables, "--use-rep", "X_tiny_clip_proj"]
    assert main([*idx, "-o", str(tmp_path / "x.idx")]) == 0
    assert len(mm.index.load(tmp_path / "x.idx")) == tiles.n_obs
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("zs_slides.h5ad: a slide table (one row per slide)") == 3
    assert "Traceback" not in text
    # a slide table given to the Python API is still an error that names it
    with pytest.raises(DataError, match="is a slide table"):
        mm.index.build(mm.io.read_h5ad(tmp_path / "zs_slides.h5ad"), use_rep="X")
