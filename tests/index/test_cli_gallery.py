"""The CLI verbs (`mmpath index ...`, `mmpath search`) and the gallery picture, on a real
tile table of a synthetic slide (so pixels can be read back)."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mmpath as mm
from mmpath import _keys as K
from mmpath.cli import main

matplotlib.use("Agg")


@pytest.fixture()
def slide_table(synthetic_slide_path, tmp_path):
    """Tiles of the synthetic slide with an 'embedding' = mean colour + position features."""
    with mm.io.open_slide(synthetic_slide_path) as slide:
        t = mm.pp.tile(slide, 64, mpp=2.0, min_tissue=0.5)
        px = mm.io.read_tiles(slide, t)
    feats = np.concatenate([px.mean(axis=(1, 2)) / 255, px.std(axis=(1, 2)) / 64], axis=1)
    t.obsm["X_toy"] = feats.astype(np.float32)
    t.uns[K.UNS][K.UNS_EMBEDDINGS] = {"X_toy": {"encoder": "toy_encoder"}}
    t.obs["region"] = np.where(t.obs[K.X] < 1024, "left", "right")
    return t


def test_gallery_labels_query_and_hits(slide_table, tmp_path):
    idx = mm.index.build(slide_table, use_rep="X_toy")
    hits = idx.search_image(slide_table[:1], k=5, drop_neighbours=0)
    fig = mm.pl.gallery(hits, idx, query=slide_table[:1], save=tmp_path / "g.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6 and titles[0].startswith("query")
    sid = slide_table.obs[K.SLIDE_ID].iloc[0]
    for t, (_, row) in zip(titles[1:], hits.iterrows(), strict=False):
        assert f"#{row['rank']}" in t and sid in t and f"({row['x']}, {row['y']})" in t
    assert (tmp_path / "g.png").stat().st_size > 1000
    # the pictures are the hit tiles' pixels
    want = mm.io.read_tiles(None, slide_table[hits["obs_name"].to_numpy()])
    drawn = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()][1:]
    np.testing.assert_array_equal(np.asarray(drawn[0]), want[0])
    # the same from the table instead of the index
    fig2 = mm.pl.gallery(hits, slide_table)
    assert len([ax for ax in fig2.axes if ax.get_images()]) == 5


def test_cli_build_add_remove_search(slide_table, tmp_path, capsys):
    a = slide_table.copy()
    b = slide_table.copy()  # a second "slide": same tiles under another id
    sid = str(a.obs[K.SLIDE_ID].iloc[0])
    b.obs[K.SLIDE_ID] = pd.Categorical(["copy"] * b.n_obs)
    b.obs_names = [f"copy:{i}" for i in range(b.n_obs)]
    b.uns[K.UNS][K.UNS_SLIDES] = {"copy": b.uns[K.UNS][K.UNS_SLIDES][sid]}
    mm.io.write_h5ad(a, tmp_path / "a.h5ad")
    mm.io.write_h5ad(b, tmp_path / "b.h5ad")
    out = tmp_path / "arch.idx"
    assert (
        main(
            [
                "-q",
                "index",
                "build",
                str(tmp_path / "a.h5ad"),
                "--use-rep",
                "X_toy",
                "-o",
                str(out),
                "--param",
                "nprobe=4",
            ]
        )
        == 0
    )
    assert f"indexed {a.n_obs} tiles of 1 slide(s)" in capsys.readouterr().out
    assert (
        main(
            ["-q", "index", "build", str(tmp_path / "a.h5ad"), "--use-rep", "X_toy", "-o", str(out)]
        )
        == 2
    )  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["-q", "index", "add", str(out), str(tmp_path / "b.h5ad")]) == 0
    assert f"holds {2 * a.n_obs} tiles of 2 slide(s)" in capsys.readouterr().out
    assert (
        main(
            [
                "-q",
                "search",
                str(out),
                "--tiles",
                str(tmp_path / "a.h5ad"),
                "--rows",
                "0:2",
                "-k",
                "3",
                "--where",
                "region == 'left'",
                "--json",
            ]
        )
        == 0
    )
    hits = pd.DataFrame(json.loads(capsys.readouterr().out))
    assert len(hits) == 6 and set(hits["region"]) == {"left"}
    assert hits.loc[hits["rank"] == 1, "score"].min() > 0.999  # itself or its copy
    assert (
        main(
            [
                "-q",
                "search",
                str(out),
                "--tiles",
                str(tmp_path / "a.h5ad"),
                "--rows",
                "0:4",
                "--slide-level",
                "-k",
                "1",
                "-o",
                str(tmp_path / "s.csv"),
            ]
        )
        == 0
    )
    slides = pd.read_csv(tmp_path / "s.csv")
    assert slides[K.SLIDE_ID].tolist() == ["copy"] and slides["votes"].item() == 4
    capsys.readouterr()
    assert main(["-q", "index", "remove", str(out), "copy"]) == 0
    assert main(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["n_vectors"] == a.n_obs and info["params"]["nprobe"] == 4
    assert main(["-q", "search", str(out), "--text", "tumour"]) == 2
    assert "_proj" in capsys.readouterr().err


def test_unembedded_tile_rows_are_embedded_with_the_encoder(slide_table, colour_clip):
    enc = colour_clip()
    t = slide_table.copy()
    mm.tl.embed(t, enc, num_workers=0, batch_size=16)
    idx = mm.index.build(t, use_rep="X_colour_clip_proj")
    bare = slide_table[:3].copy()
    del bare.obsm["X_toy"]
    via_pixels = idx.search_image(bare, k=4, encoder=enc)
    via_obsm = idx.search_image(t[:3], k=4)
    assert via_pixels["tile_id"].tolist() == via_obsm["tile_id"].tolist()
    np.testing.assert_allclose(via_pixels["score"], via_obsm["score"], atol=1e-5)


def test_cli_search_gallery_png_html_and_folder(slide_table, tmp_path, capsys):
    mm.io.write_h5ad(slide_table, tmp_path / "a.h5ad")
    idx_dir = tmp_path / "a.idx"
    assert (
        main(
            [
                "-q",
                "index",
                "build",
                str(tmp_path / "a.h5ad"),
                "--use-rep",
                "X_toy",
                "-o",
                str(idx_dir),
            ]
        )
        == 0
    )
    base = [
        "-q",
        "search",
        str(idx_dir),
        "--tiles",
        str(tmp_path / "a.h5ad"),
        "--rows",
        "0:2",
        "-k",
        "4",
    ]
    assert main([*base, "-o", str(tmp_path / "hits.png")]) == 0
    with Image.open(tmp_path / "hits.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    folder = tmp_path / "res"
    assert main([*base, "-o", str(folder)]) == 0
    hits = pd.read_csv(folder / "hits.csv")
    assert len(hits) == 8
    for q in (0, 1):
        assert (folder / f"gallery_{q}.png").is_file()
        page = (folder / f"gallery_{q}.html").read_text()
        # self-contained: the query and its 4 hits inline, no network
        assert page.count("data:image/png;base64,") == 5 and "http" not in page
        first = hits[hits["query"] == q].iloc[0]
        assert f"{first['slide_id']}<br>({first['x']}, {first['y']})" in page
    assert "8 hit(s) -> " in capsys.readouterr().out
    assert main([*base, "-o", str(tmp_path / "nopics"), "--no-plots"]) == 0
    assert sorted(p.name for p in (tmp_path / "nopics").iterdir()) == ["hits.csv"]
