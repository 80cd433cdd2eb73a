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
