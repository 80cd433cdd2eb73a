"""Image queries without a known mpp are taken at the index's tiling scale (issue 11 item 1):
an exact crop of an indexed tile comes back first by default, from the API and the CLI, on
real tiles of the bundled sample embedded with the demo ViT (0.5 µm/px, 112 px input)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

import mmpath as mm
from mmpath import _keys as K
from mmpath.cli import main

ENCODER = "mmpath-demo-vit"


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    """224 px tiles at 0.5 µm/px of a region of the sample (2x the encoder's input: the
    encoder sees a centre crop of each tile), embedded and indexed."""
    root = tmp_path_factory.mktemp("scale")
    with mm.datasets.sample_slide() as slide:
        t = mm.pp.tile(slide, 224, mpp=0.5, min_tissue=0.3)
        t = t[:60].copy()
        px = mm.io.read_tiles(slide, t)
    mm.tl.embed(t, ENCODER, num_workers=0)
    rep = next(k for k in t.obsm if k.startswith(K.REP_PREFIX))
    idx = mm.index.build(t, use_rep=rep)
    idx.save(root / "sample.idx")
    return t, px, idx, root


def _rank_of(hits, name: str) -> int:
    got = hits.index[hits["obs_name"] == name]
    return int(hits.loc[got[0], "rank"]) if len(got) else 10**6


@pytest.mark.parametrize("i", [7, 31])
def test_exact_crop_comes_back_first_by_default(sample_index, i, caplog):
    t, px, idx, _ = sample_index
    name = t.obs_names[i]
    with caplog.at_level(logging.INFO, logger="mmpath.index"):
        whole = idx.search_image(px[i], k=len(t))
    assert _rank_of(whole, name) == 1
    assert whole["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert any("assumed at the index's tiling scale, 0.499" in r.message for r in caplog.records)
    # the centre 112 px: exactly what the model saw of the tile
    c = px[i][56:168, 56:168]
    assert _rank_of(idx.search_image(c, k=len(t)), name) == 1
    # a larger field around the tile is centre-cropped to the tile's field, with a note
    caplog.clear()
    big = np.pad(px[i], ((40, 40), (40, 40), (0, 0)), mode="reflect")
    with caplog.at_level(logging.INFO, logger="mmpath.index"):
        hits = idx.search_image(big, k=len(t))
    assert _rank_of(hits, name) == 1
    assert hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert any("centre-cropped" in r.message for r in caplog.records)


def test_explicit_mpp_still_honoured(sample_index):
    t, px, idx, _ = sample_index
    # the same pixels declared at half the magnification are a different query
    a = idx.search_image(px[7], k=5)
    b = idx.search_image(px[7], k=5, mpp=1.0)
    assert a["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert b["score"].iloc[0] < 0.999


def test_index_tiling_read_from_manifest(sample_index):
    from mmpath.index._query import index_tiling

    _, _, idx, _ = sample_index
    mpp, size = index_tiling(idx)
    assert mpp == pytest.approx(0.499, abs=1e-3) and size == 224


def test_cli_exact_crop_first_without_mpp(sample_index, tmp_path, capsys):
    t, px, _, root = sample_index
    q = tmp_path / "query.png"
    Image.fromarray(px[12][30:200, 20:210]).save(q)  # an off-centre crop, not square
    Image.fromarray(px[12]).save(tmp_path / "whole.png")
    rc = main(
        [
            "search",
            str(root / "sample.idx"),
            "--image",
            str(tmp_path / "whole.png"),
            "-k",
            "3",
            "--json",
        ]
    )
    assert rc == 0
    out, err = capsys.readouterr()
    import json

    hits = json.loads(out)
    assert hits[0]["obs_name"] == t.obs_names[12]
    assert "tiling scale" in err
    rc = main(["-q", "search", str(root / "sample.idx"), "--image", str(q), "-k", "3", "--json"])
    assert rc == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["obs_name"] == t.obs_names[12]
