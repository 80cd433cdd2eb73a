"""``io._h5patch.write_added`` (issue 11, many tiny tables): writing only what embedding added
to a copy of the table's file reads back exactly like a full ``anndata`` write."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.io._h5patch import SubtreeCache, write_added


def assert_same(a, b, where="") -> None:
    """Deep, exact equality of two values read from h5ad (types included)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and (a == b or a is b), (where, a, b)


def assert_same_table(a, b) -> None:
    assert a.shape == b.shape
    pd.testing.assert_frame_equal(a.obs, b.obs, check_exact=True)
    pd.testing.assert_frame_equal(a.var, b.var, check_exact=True)
    assert list(a.obs.columns) == list(b.obs.columns)
    assert sorted(a.obsm) == sorted(b.obsm)
    for k in a.obsm:
        assert_same(np.asarray(a.obsm[k]), np.asarray(b.obsm[k]), k)
    assert_same(dict(a.uns), dict(b.uns), "uns")


@pytest.fixture
def table(tmp_path):
    with mm.datasets.sample_slide() as s:
        t = mm.pp.tile(s, 224, mpp=2.0, min_tissue=0.5)[:5].copy()
    return mm.io.write_h5ad(t, tmp_path / "t.h5ad")


def _embed_like(adata, key: str, dim: int, seed: int, proj: bool = False) -> None:
    """What ``tl.embed`` adds (an obsm key, obs tile_ok, a provenance record)."""
    rng = np.random.default_rng(seed)
    adata.obsm[key] = rng.normal(size=(adata.n_obs, dim)).astype(np.float32)
    if proj:
        adata.obsm[key + K.PROJ_SUFFIX] = rng.normal(size=(adata.n_obs, 4)).astype(np.float32)
    ok = rng.random(adata.n_obs) > 0.3
    adata.obs[K.TILE_OK] = ok
    root = mm.io._prov.root(adata)
    emb = dict(root.get(K.UNS_EMBEDDINGS, {}))
    sid = str(adata.obs[K.SLIDE_ID].iloc[0])
    emb[key] = {
        "encoder": key,
        "weights": None,
        "data": {"input_size": 224, "mean": [0.5, 0.4, 0.3], "mpp": 0.5},
        "embed_dim": dim,
        "preprocess": {sid: {"tile_size": 224, "resize_to": None}},
        "n_failed": int((~ok).sum()),
        "flag": True,
    }
    root[K.UNS_EMBEDDINGS] = emb


def _both(table, tmp_path, step, **kw):
    """Write ``step(table)`` in full and with write_added; return both read back."""
    full, fast = tmp_path / "full.h5ad", tmp_path / "fast.h5ad"
    shutil.copyfile(table, fast)
    a = mm.io.read_h5ad(table)
    step(a)
    mm.io.write_h5ad(a, full)
    b = mm.io.read_h5ad(fast)
    step(b)
    write_added(b, fast, fast, **kw)
    return mm.io.read_h5ad(full), mm.io.read_h5ad(fast)


def test_added_elements_read_back_like_a_full_write(table, tmp_path):
    key = "X_a"
    kw = dict(obsm=[key, key + K.PROJ_SUFFIX], obs=[K.TILE_OK], uns=(K.UNS, K.UNS_EMBEDDINGS, key))
    full, fast = _both(table, tmp_path, lambda t: _embed_like(t, key, 8, 0, proj=True), **kw)
    assert_same_table(full, fast)
    assert list(fast.obs.columns)[-1] == K.TILE_OK and fast.obs[K.TILE_OK].dtype == bool
    assert not list(tmp_path.glob(".*tmp-*"))  # atomic: no temporary left


def test_replacing_an_embedding_next_to_another_keeps_both(table, tmp_path):
    """A second encoder, then the first again (--overwrite): replaced, not duplicated."""
    first = mm.io.read_h5ad(table)
    _embed_like(first, "X_a", 8, 0)
    mm.io.write_h5ad(first, table)  # the table already holds X_a and tile_ok

    def step(t):
        _embed_like(t, "X_b", 6, 1)
        _embed_like(t, "X_a", 8, 2)  # new values for X_a

    kw_a = dict(obsm=["X_a"], obs=[K.TILE_OK], uns=(K.UNS, K.UNS_EMBEDDINGS, "X_a"))
    full, fast = _both(table, tmp_path, lambda t: _embed_like(t, "X_a", 8, 2), **kw_a)
    assert_same_table(full, fast)
    full, fast = _both(
        table,
        tmp_path,
        step,
        obsm=["X_a", "X_b"],
        obs=[K.TILE_OK],
        uns=(K.UNS, K.UNS_EMBEDDINGS),
    )
    assert_same_table(full, fast)
    assert sorted(fast.uns[K.UNS][K.UNS_EMBEDDINGS]) == ["X_a", "X_b"]


def test_shared_cache_writes_equal_records_for_many_tables(table, tmp_path):
    """Records repeated across tables are copied from the cache: each reads back whole."""
    cache = SubtreeCache()
    key = "X_a"
    kw = dict(obsm=[key], obs=[K.TILE_OK], uns=(K.UNS, K.UNS_EMBEDDINGS, key), cache=cache)
    for i in range(3):
        sub = tmp_path / f"r{i}"
        sub.mkdir()
        full, fast = _both(table, sub, lambda t, i=i: _embed_like(t, key, 8, i % 2), **kw)
        assert_same_table(full, fast)
    cache.close()


def test_cli_embed_writes_what_a_full_write_would(tmp_path, monkeypatch, capsys):
    """``mmpath embed`` on tiny tables (grouped, written with write_added) gives files that
    read back exactly like the same run writing every table in full."""
    from PIL import Image

    from mmpath.cli import main
    from mmpath.io import _h5patch

    with mm.datasets.sample_slide() as s:
        big = s.read_region((600, 900), 0, (112 * 3, 112))
    tables = []
    for i in range(3):
        png = tmp_path / f"core{i}.png"
        Image.fromarray(np.ascontiguousarray(big[:, i * 112 : (i + 1) * 112])).save(png)
        with mm.io.open_slide(png, mpp=0.5) as slide:
            t = mm.pp.tile(slide, 112, mpp=0.5, min_tissue=0.0)
        tables.append(mm.io.write_h5ad(t, tmp_path / "src" / f"core{i}.h5ad"))
    runs = {}
    for how in ("added", "full"):
        out = []
        for p in tables:
            out.append(tmp_path / how / p.name)
            out[-1].parent.mkdir(exist_ok=True)
            shutil.copyfile(p, out[-1])
        # a dead writer's half-written copy next to one table: removed, once per folder listing
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        p.wait()
        (out[1].parent / f".{out[1].name}.tmp-{p.pid}").write_bytes(b"half")
        if how == "full":
            monkeypatch.setattr(
                _h5patch, "write_added", lambda a, src, path, **kw: mm.io.write_h5ad(a, path)
            )
        argv = ["-q", "embed", *map(str, out), "--encoder", "mmpath-demo-vit", "--batch-size", "2"]
        assert main(argv) == 0
        runs[how] = [mm.io.read_h5ad(p) for p in out]
        assert sorted(q.name for q in out[0].parent.iterdir()) == sorted(q.name for q in out)
    assert "embedded 3/3 table(s)" in capsys.readouterr().out
    for a, b in zip(runs["added"], runs["full"], strict=True):
        assert "X_demo_vit" in a.obsm and K.TILE_OK in a.obs
        assert_same_table(a, b)
