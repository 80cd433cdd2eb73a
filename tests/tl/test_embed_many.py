"""Many small slides (TMA cores, crop datasets): packed into shared batches by ``tl.embed`` and
grouped across tables by ``mmpath embed``, with the same results as one slide at a time
(issue 11, throughput on many small slides; the speed itself is tools/bench/bench_embed.py
--many-slides, never a timed test)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mmpath as mm
from mmpath import _keys as K
from mmpath.cli import main
from mmpath.tl._embed_data import pack_slides, useful_workers


def test_pack_slides_rule():
    sizes = [("a", 3, 112), ("b", 5, 112), ("big", 70, 112), ("c", 2, 112), ("d", 2, 224)]
    assert pack_slides(sizes, 64, 2048) == [["a", "b"], ["big"], ["c"], ["d"]]
    assert pack_slides([(str(i), 10, 112) for i in range(5)], 64, 25) == [
        ["0", "1"],
        ["2", "3"],
        ["4"],
    ]
    assert useful_workers(2, 1) == 0 and useful_workers(2, 8) == 2


@pytest.fixture(scope="module")
def small_tables(tmp_path_factory):
    """7 one- or two-tile slides cut from the sample, each its own table on disk."""
    root = tmp_path_factory.mktemp("many")
    with mm.datasets.sample_slide() as s:
        big = s.read_region((600, 900), 0, (112 * 6, 112 * 4))
    paths = []
    for i in range(7):
        r, c = divmod(i, 6)
        w = 224 if i % 5 == 0 else 112  # a few two-tile slides
        img = big[(r * 112) % 336 : (r * 112) % 336 + 112, c * 112 : c * 112 + w]
        if img.shape[1] < w:
            img = np.concatenate([img, img], axis=1)[:, :w]
        png = root / f"core{i:02d}.png"
        Image.fromarray(np.ascontiguousarray(img)).save(png)
        with mm.io.open_slide(png, mpp=0.5) as slide:
            t = mm.pp.tile(slide, 112, mpp=0.5, min_tissue=0.0)
        paths.append(mm.io.write_h5ad(t, root / "tables" / f"core{i:02d}.h5ad"))
    return paths


@pytest.fixture(scope="module")
def alone(small_tables):
    """Each table embedded on its own (the reference)."""
    enc = mm.models.create_encoder("mmpath-demo-vit")
    out = []
    for p in small_tables:
        t = mm.io.read_h5ad(p)
        mm.tl.embed(t, enc, batch_size=8, num_workers=0)
        out.append(t.obsm["X_demo_vit"])
    return out


def test_packed_cohort_equals_slide_by_slide(small_tables, alone):
    enc = mm.models.create_encoder("mmpath-demo-vit")
    tables = [mm.io.read_h5ad(p) for p in small_tables]
    cohort = mm.io.concat([t.copy() for t in tables])
    mm.tl.embed(cohort, enc, batch_size=8, num_workers=0)
    start = 0
    for t, ref in zip(tables, alone, strict=True):
        got = cohort.obsm["X_demo_vit"][start : start + t.n_obs]
        np.testing.assert_allclose(got, ref, atol=1e-5)
        start += t.n_obs
    rec = cohort.uns[K.UNS][K.UNS_EMBEDDINGS]["X_demo_vit"]
    assert len(rec["preprocess"]) == len(tables)


def test_cli_groups_small_tables_and_writes_each(small_tables, alone, tmp_path, capsys):
    import shutil

    copies = []
    for p in small_tables:
        copies.append(tmp_path / p.name)
        shutil.copyfile(p, copies[-1])
    rc = main(["-q", "embed", *map(str, copies), "--encoder", "demo-vit", "--batch-size", "8"])
    assert rc == 0
    assert "embedded 7/7 table(s)" in capsys.readouterr().out
    for p, ref in zip(copies, alone, strict=True):
        got = mm.io.read_h5ad(p)
        sid = str(got.obs[K.SLIDE_ID].iloc[0])
        rec = got.uns[K.UNS][K.UNS_EMBEDDINGS]["X_demo_vit"]
        assert list(rec["preprocess"]) == [sid] and rec["n_failed"] == 0
        np.testing.assert_allclose(got.obsm["X_demo_vit"], ref, atol=1e-5)
    assert not list(tmp_path.glob("*.partial"))  # no checkpoint files for small tables
    # a re-run skips every table
    assert main(["-q", "embed", *map(str, copies), "--encoder", "demo-vit"]) == 0
    assert "7 already done" in capsys.readouterr().out


def test_packed_cohort_with_a_stain_target_normalises_every_slide(tmp_path):
    """A stain target must reach every slide of a cohort of small slides (packed batches carry
    no per-slide normaliser, so these embed slide by slide): equal to one slide at a time."""
    import shutil

    enc = mm.models.create_encoder("mmpath-demo-vit")
    tables = []
    for name in ("a", "b", "c"):  # three 3-tile slides of real tissue, fewer tiles than a batch
        path = shutil.copyfile(mm.datasets.sample_slide_path(), tmp_path / f"{name}.svs")
        with mm.io.open_slide(path) as s:
            tables.append(mm.pp.tile(s, 112, mpp=1.0, min_tissue=0.6)[:3].copy())
            ref = s.read_region((1000, 1500), 0, (512, 512))
    target = mm.pp.fit_stain_target(
        np.clip(ref * np.array([0.85, 0.9, 1.05]), 0, 255).astype(np.uint8), method="reinhard"
    )
    cohort = mm.io.concat([t.copy() for t in tables])
    mm.tl.embed(cohort, enc, batch_size=8, num_workers=0, stain=target)
    plain = mm.io.concat([t.copy() for t in tables])
    mm.tl.embed(plain, enc, batch_size=8, num_workers=0)
    start = 0
    for t in tables:
        mm.tl.embed(t, enc, batch_size=8, num_workers=0, stain=target)
        got = cohort.obsm["X_demo_vit"][start : start + t.n_obs]
        np.testing.assert_allclose(got, t.obsm["X_demo_vit"], atol=1e-5)
        start += t.n_obs
    assert not np.allclose(cohort.obsm["X_demo_vit"], plain.obsm["X_demo_vit"], atol=1e-3)
