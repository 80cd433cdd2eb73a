"""index.build(center=, whiten=): statistics learnt at build time, stored, applied to queries."""

from __future__ import annotations

import numpy as np
import pytest

import mmpath as mm
from mmpath.errors import IndexError_
from mmpath.index import _center

from .conftest import REP, make_table


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fit_apply_centre_and_whiten():
    rng = np.random.default_rng(0)
    x = _unit(5.0 + rng.standard_normal((300, 8)) * np.linspace(0.1, 2, 8))
    spec = _center.fit(x)
    assert spec["whiten"] is None and spec["n"] == 300
    y = _center.apply(x, spec)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)
    ref = _unit(x - x.mean(0))
    np.testing.assert_allclose(y, ref, atol=1e-5)
    ws = _center.fit(x, whiten=True, eps=1e-9)
    w = np.asarray(ws["whiten"], np.float64)
    xc = x - x.mean(0)
    cov = xc.T @ xc / (len(x) - 1)
    np.testing.assert_allclose(w @ cov @ w, np.eye(8), atol=1e-3)  # whitened covariance = I
    assert _center.apply(x, None) is x
    with pytest.raises(IndexError_, match="at least 2"):
        _center.fit(x[:1])


def test_centred_index_searches_centred_space_and_round_trips(tmp_path):
    t = make_table(2, 60, 16)
    t.obsm[REP] = t.obsm[REP] + 8.0  # anisotropic: every vector shares a large offset
    plain = mm.index.build(t, use_rep=REP, factory="Flat")
    assert "center" not in plain.manifest  # off by default
    idx = mm.index.build(t, use_rep=REP, factory="Flat", center=True)
    x = _unit(t.obsm[REP])
    xc = _unit(x - x.mean(0))
    D, ids = idx.search_vectors(t.obsm[REP][:5], k=4)
    sims = xc[:5] @ xc.T
    ref = np.argsort(-sims, axis=1)[:, :4]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(D, np.take_along_axis(sims, ref, 1), atol=1e-4)
    assert D[:, 1].mean() < plain.search_vectors(t.obsm[REP][:5], k=4)[0][:, 1].mean()
    idx.save(tmp_path / "idx")
    back = mm.index.load(tmp_path / "idx")
    assert back.manifest["center"]["mean"] == idx.manifest["center"]["mean"]
    D2, ids2 = back.search_vectors(t.obsm[REP][:5], k=4)
    np.testing.assert_array_equal(ids2, ids)
    # tiles added later go through the same (unchanged) centring: each finds itself at 1.0
    new = make_table(1, 10, 16, prefix="N", seed=3)
    new.obsm[REP] = new.obsm[REP] + 8.0
    before = list(back.manifest["center"]["mean"])
    assert back.add(new) == 10
    assert back.manifest["center"]["mean"] == before
    Dn, idn = back.search_vectors(new.obsm[REP], k=1)
    np.testing.assert_allclose(Dn[:, 0], 1.0, atol=1e-4)
    with pytest.raises(IndexError_, match="needs center=True"):
        mm.index.build(t, use_rep=REP, factory="Flat", whiten=True)
    w = mm.index.build(t, use_rep=REP, factory="Flat", center=True, whiten=True)
    assert len(w.manifest["center"]["whiten"]) == 16


def test_streamed_moments_equal_the_one_shot_statistics():
    rng = np.random.default_rng(1)
    x = _unit(3.0 + rng.standard_normal((1000, 12)) * np.linspace(0.2, 3, 12))
    one = _center.fit(x, whiten=True)
    m = _center.Moments(scatter=True)
    for block in np.split(x, [1, 7, 300, 301, 650]):  # uneven blocks, one of a single row
        m.update(block)
    m.update(x[:0])  # an empty table changes nothing
    xc = x - x.mean(0)
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(m.m2 / (len(x) - 1), xc.T @ xc / (len(x) - 1), atol=1e-12)
    two = m.spec(whiten=True)
    assert two["n"] == one["n"] == 1000
    np.testing.assert_allclose(two["mean"], one["mean"], atol=1e-7)
    np.testing.assert_allclose(two["whiten"], one["whiten"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("factory", "whiten"), [("Flat", True), ("IVF8,Flat", False)])
def test_centring_from_files_streams_and_equals_in_memory(tmp_path, monkeypatch, factory, whiten):
    import anndata as ad

    from mmpath.index import _tables as T

    tables, paths = [], []
    for i in range(4):
        t = make_table(1, 120, 16, seed=10 + i, prefix=f"F{i}_")
        t.obsm[REP] = t.obsm[REP] + 6.0  # a shared offset: centring matters
        paths.append(tmp_path / f"f{i}.h5ad")
        mm.io.write_h5ad(t, paths[-1])
        tables.append(t)
    kw = {"use_rep": REP, "factory": factory, "center": True, "whiten": whiten}
    kw["params"] = {"nprobe": 8} if factory != "Flat" else None
    ram = mm.index.build(tables, **kw)
    real = T.collect

    def one_table_only(tabs, *a, **k):
        assert len(tabs) == 1, "collect called on several tables at once"
        return real(tabs, *a, **k)

    def forbidden(*a, **k):
        raise AssertionError("a whole table or archive was read or concatenated")

    monkeypatch.setattr(T, "collect", one_table_only)
    for mod, name in ((ad, "concat"), (ad, "read_h5ad"), (mm.io, "concat"), (mm.io, "read_h5ad")):
        monkeypatch.setattr(mod, name, forbidden)
    disk = mm.index.build(paths, **kw, workers=2, out=tmp_path / "c.idx")
    monkeypatch.undo()
    assert disk.on_disk == (factory != "Flat")
    a, b = ram.manifest["center"], disk.manifest["center"]
    assert a["n"] == b["n"] == 480
    np.testing.assert_allclose(b["mean"], a["mean"], atol=1e-7)
    if whiten:
        np.testing.assert_allclose(b["whiten"], a["whiten"], rtol=1e-5, atol=1e-5)
    q = np.concatenate([t.obsm[REP][:10] for t in tables])
    D1, I1 = ram.search_vectors(q, 8)
    D2, I2 = disk.search_vectors(q, 8)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, atol=1e-5)
    plain = mm.index.build(paths, use_rep=REP, factory=factory)
    assert not np.array_equal(plain.search_vectors(q, 8)[1], I2)  # centring changed the answer


def test_cli_build_center_whiten_from_files(tmp_path, capsys):
    from mmpath.cli import main

    paths = []
    for i in range(3):
        t = make_table(1, 80, 16, seed=20 + i, prefix=f"C{i}_")
        paths.append(str(tmp_path / f"c{i}.h5ad"))
        mm.io.write_h5ad(t, paths[-1])
    out = tmp_path / "w.idx"
    assert main(["index", "build", *paths, "--use-rep", REP, "-o", str(out), "--whiten"]) == 0
    assert "indexed 240 tiles of 3 slide(s)" in capsys.readouterr().out
    spec = mm.index.read_manifest(out)["center"]
    ref = _center.fit(
        np.concatenate([_unit(mm.io.read_h5ad(p).obsm[REP]) for p in paths]), whiten=True
    )
    np.testing.assert_allclose(spec["mean"], ref["mean"], atol=1e-7)
    np.testing.assert_allclose(spec["whiten"], ref["whiten"], rtol=1e-5, atol=1e-5)
