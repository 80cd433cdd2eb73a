"""Image, text and slide queries, with a tiny image-text model whose towers are aligned by
construction: the image tower maps a tile's mean colour to a direction, the text tower maps
colour words to the same directions. So "red" must find the red tiles."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import IndexError_

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.1, 0.1, 1.0)}
WORDS = list(COLOURS)


def _tile(colour: str, rng, size: int = 40) -> np.ndarray:
    base = np.asarray(COLOURS[colour]) * 200
    return np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)


@pytest.fixture()
def colour_table(colour_clip):
    ColourCLIP = colour_clip
    rng = np.random.default_rng(0)
    colours = rng.choice(WORDS, 90)
    enc = ColourCLIP()
    from mmpath.index._query import encode_images

    imgs = [_tile(c, rng) for c in colours]
    sids = np.repeat(["T0", "T1", "T2"], 30)
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical(sids),
            K.X: np.tile(np.arange(30), 3) * 40,
            K.Y: 0,
            "colour": colours,
        },
        index=[f"{s}:{i}" for s, i in zip(sids, np.tile(np.arange(30), 3), strict=False)],
    )
    t = ad.AnnData(obs=obs)
    t.obsm["X_colour_clip"] = encode_images(imgs, enc, proj=False)
    t.obsm["X_colour_clip_proj"] = encode_images(imgs, enc, proj=True)
    t.uns[K.UNS] = {
        K.UNS_SLIDES: {},
        K.UNS_EMBEDDINGS: {
            "X_colour_clip": {"encoder": "colour_clip", "proj_key": "X_colour_clip_proj"}
        },
    }
    return t, enc


def test_text_search_returns_matching_tiles(colour_table):
    t, enc = colour_table
    idx = mm.index.build(t, use_rep="X_colour_clip_proj")
    assert idx.encoder == "colour_clip"
    hits = idx.search_text(["a red tile", "green"], k=10, encoder=enc)
    assert hits.loc[hits["query"] == 0, "colour"].eq("red").all()
    assert hits.loc[hits["query"] == 1, "colour"].eq("green").all()
    assert hits["text"].iloc[0] == "a red tile"
    n_blue = int((t.obs["colour"] == "blue").sum())
    blue = idx.search_text("blue", k=n_blue, encoder=enc)
    assert set(blue["obs_name"]) == set(t.obs_names[t.obs["colour"] == "blue"])


def test_text_search_refusals(colour_table, colour_clip):
    t, enc = colour_table
    feats = mm.index.build(t, use_rep="X_colour_clip")
    with pytest.raises(IndexError_, match="_proj"):
        feats.search_text("red", k=3, encoder=enc)
    idx = mm.index.build(t, use_rep="X_colour_clip_proj")
    with pytest.raises(IndexError_, match="encoder 'other'"):
        idx.search_text("red", k=3, encoder=colour_clip("other"))
    for empty in ("", "  ", []):
        with pytest.raises(IndexError_, match="query text is empty"):
            idx.search_text(empty, k=3, encoder=enc)


def test_image_search_by_array_file_and_pil(colour_table, tmp_path):
    t, enc = colour_table
    idx = mm.index.build(t, use_rep="X_colour_clip_proj")
    rng = np.random.default_rng(1)
    green = _tile("green", rng, size=64)
    red = np.pad(_tile("red", rng, size=48), ((0, 0), (8, 8), (0, 0)), mode="edge")  # 48 x 64
    Image.fromarray(red).save(tmp_path / "q.png")
    for query, want in [
        (green, "green"),
        (tmp_path / "q.png", "red"),
        (Image.fromarray(green), "green"),
        (str(tmp_path / "q.png"), "red"),
    ]:
        hits = idx.search_image(query, k=5, encoder=enc)
        assert hits["colour"].eq(want).all(), want
    both = idx.search_image([green, red], k=5, encoder=enc)
    assert both.groupby("query")["colour"].first().tolist() == ["green", "red"]


def test_slide_search_majority_vote(make):
    # slides 0-3 draw from clusters {0..3}, slides 4-7 from {4..7}: class A vs class B
    t = make(8, 60, 16, n_clusters=8, seed=4)
    cls = np.where(np.arange(8) < 4, "A", "B")
    clusters = t.obs["cluster"].astype(int).to_numpy()
    slide_no = t.obs[K.SLIDE_ID].str[1:].astype(int).to_numpy()
    keep = (clusters < 4) == (slide_no < 4)
    t = t[keep].copy()
    t.obs["diagnosis"] = cls[t.obs[K.SLIDE_ID].str[1:].astype(int)]
    idx = mm.index.build(t, use_rep="X_toy")
    q = t[t.obs[K.SLIDE_ID] == "S5"]
    slides = idx.search_slides(q, k=3, tiles_k=5)
    assert "S5" not in set(slides[K.SLIDE_ID])
    assert slides["diagnosis"].eq("B").all()
    assert slides["rank"].tolist() == [1, 2, 3]
    assert (np.diff(slides["votes"]) <= 0).all() and slides["vote_frac"].max() <= 1
    mosaic = idx.search_slides(q, k=2, mosaic=4)
    assert mosaic["diagnosis"].eq("B").all() and mosaic["votes"].max() <= 4
    with pytest.raises(IndexError_, match="slides"):
        idx.search_slides(q, k=50)


def test_evaluation_helpers_known_values():
    hits = [["a", "b", "b"], ["a", "a", "b"], ["c", "c", "c"]]
    query = ["b", "b", "a"]
    assert mm.index.top_k_accuracy(hits, query, 1) == 0
    assert mm.index.top_k_accuracy(hits, query, 2) == pytest.approx(1 / 3)
    assert mm.index.top_k_accuracy(hits, query, 3) == pytest.approx(2 / 3)
    assert mm.index.majority_vote_at_k(hits, query, 3) == pytest.approx(1 / 3)
    assert mm.index.majority_vote(["b", "a", "a", "b"]) == "b"  # tie -> better-ranked label
    assert mm.index.recall_at_k([[1, 2, 3], [4, 5, -1]], [[3, 2, 9], [4, 6, 7]]) == 0.5
    assert mm.index.recall_at_k([[1, 2, 3]], [[1, 2, 3]], 2) == 1.0


def test_recall_matches_faiss_reference():
    import faiss

    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, (30, 10))
    e = np.stack([rng.permutation(50)[:10] for _ in range(30)])
    ref = faiss.eval_intersection(a, e) / a.size
    assert mm.index.recall_at_k(a, e, 10) == pytest.approx(ref)


def test_evaluate_leave_one_slide_out(make):
    t = make(4, 80, 16, n_clusters=4, seed=2)
    idx = mm.index.build(t, use_rep="X_toy")
    scores = mm.index.evaluate(idx, t[::8], label="cluster", k=(1, 5))
    assert scores["top1_acc"] == 1.0 and scores["mMV@5"] == 1.0 and scores["n_queries"] == 40
    noise = t.copy()
    noise.obs["cluster"] = np.random.default_rng(0).permutation(noise.obs["cluster"].to_numpy())
    idx2 = mm.index.build(noise, use_rep="X_toy")
    assert mm.index.evaluate(idx2, noise[::8], label="cluster", k=(1,))["top1_acc"] < 0.6


def test_image_queries_read_like_slides(colour_table, tmp_path):
    """16-bit arrays and TIFFs scale to 8 bits (not clipped to white); transparent pixels are
    white glass, as open_slide reads them."""
    import tifffile

    t, enc = colour_table
    idx = mm.index.build(t, use_rep="X_colour_clip_proj")
    green = _tile("green", np.random.default_rng(2), size=64)
    tifffile.imwrite(tmp_path / "q16.tif", green.astype(np.uint16) * 257)
    rgba = np.dstack([green, np.full(green.shape[:2], 255, np.uint8)])
    rgba[:, :16] = 0  # transparent black border, as exporters write it
    Image.fromarray(rgba).save(tmp_path / "qa.png")
    ref = idx.search_image(green, k=3, encoder=enc)["score"].to_numpy()
    for query in (green.astype(np.uint16) * 257, tmp_path / "q16.tif"):
        hits = idx.search_image(query, k=3, encoder=enc)
        assert hits["colour"].eq("green").all()
        np.testing.assert_allclose(hits["score"].to_numpy(), ref, atol=1e-3)
    white = np.concatenate([np.full((64, 16, 3), 255, np.uint8), green[:, 16:]], axis=1)
    want = idx.search_image(white, k=3, encoder=enc)["score"].to_numpy()
    for query in (tmp_path / "qa.png", Image.fromarray(rgba)):
        got = idx.search_image(query, k=3, encoder=enc)["score"].to_numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_empty_or_directory_query_image_is_a_clear_error(colour_table, tmp_path):
    from mmpath.errors import DataError

    t, enc = colour_table
    idx = mm.index.build(t, use_rep="X_colour_clip_proj")
    with pytest.raises(DataError, match="empty"):
        idx.search_image(np.zeros((0, 0, 3), np.uint8), k=3, encoder=enc)
    with pytest.raises(DataError, match="is a directory"):
        idx.search_image(tmp_path, k=3, encoder=enc)
