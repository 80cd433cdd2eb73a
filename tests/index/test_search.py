"""Exact and approximate search, filters, neighbour dropping, the DataFrame contract."""

from __future__ import annotations

import numpy as np
import pytest

import mmpath as mm
from mmpath import _keys as K

REP = "X_toy"


def _brute_force(x, q, k):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = qn @ xn.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def test_exact_search_equals_numpy_brute_force(table):
    idx = mm.index.build(table, use_rep=REP)
    assert idx.factory == "Flat"
    rng = np.random.default_rng(3)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    D, nbr = idx.search_vectors(q, k=10)
    Dref, Iref = _brute_force(table.obsm[REP], q, 10)
    np.testing.assert_allclose(D, Dref, atol=1e-5)
    np.testing.assert_array_equal(nbr, Iref)  # ids are row numbers of the first table


@pytest.mark.parametrize("factory", ["IVF32,PQ16x4fs,RFlat", "HNSW16,Flat", "IVF32,Flat"])
def test_approximate_recall_at_10(big_table, factory):
    x = big_table.obsm[REP]
    exact = mm.index.build(big_table, use_rep=REP, factory="Flat")
    approx = mm.index.build(big_table, use_rep=REP, factory=factory)
    rng = np.random.default_rng(5)
    q = x[rng.choice(len(x), 200, replace=False)] + 0.1 * rng.standard_normal((200, 32))
    _, Ie = exact.search_vectors(q, k=10)
    _, Ia = approx.search_vectors(q, k=10)
    assert mm.index.recall_at_k(Ia, Ie, 10) >= 0.9


def test_hits_frame_columns_and_scores(table):
    idx = mm.index.build(table, use_rep=REP)
    hits = idx.search(table.obsm[REP][:2], k=3)
    assert list(hits.columns[:4]) == ["query", "rank", "score", "tile_id"]
    assert {"obs_name", K.SLIDE_ID, K.X, K.Y, "mpp", "cluster", "organ"} <= set(hits.columns)
    assert hits["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    # each query finds itself first with cosine 1
    assert hits.loc[hits["rank"] == 1, "obs_name"].tolist() == list(table.obs_names[:2])
    np.testing.assert_allclose(hits.loc[hits["rank"] == 1, "score"], 1.0, atol=1e-5)
    assert (np.diff(hits["score"].to_numpy()[:3]) <= 1e-6).all()


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16,Flat", "IVF8,PQ8x4fs,RFlat"])
def test_where_filter(table, factory):
    idx = mm.index.build(table, use_rep=REP, factory=factory, params={"nprobe": 8})
    hits = idx.search(table.obsm[REP][:5], k=10, where="organ == 'lung'")
    assert len(hits) == 50
    assert set(hits["organ"]) == {"lung"}
    lung = table.obs["organ"].to_numpy() == "lung"
    _, Iref = _brute_force(table.obsm[REP][lung], table.obsm[REP][:5], 10)
    ids = np.flatnonzero(lung)[Iref]
    if factory == "Flat":
        np.testing.assert_array_equal(hits["tile_id"].to_numpy().reshape(5, 10), ids)


def test_drop_neighbours(table):
    idx = mm.index.build(table, use_rep=REP)
    q = table[:1]
    plain = idx.search_image(q, k=5)
    assert plain["obs_name"].iloc[0] == table.obs_names[0]  # finds itself
    far = idx.search_image(q, k=5, drop_neighbours=float("inf"))
    assert len(far) == 5 and (far[K.SLIDE_ID] != "S0").all()
    near = idx.search_image(q, k=30, drop_neighbours=500)
    assert len(near) == 30 and table.obs_names[0] not in set(near["obs_name"])
    same = near[near[K.SLIDE_ID] == "S0"]
    assert len(same) > 0 and (np.hypot(same[K.X], same[K.Y]) > 500).all()


def test_min_distance_spreads_hits(table):
    idx = mm.index.build(table, use_rep=REP)
    hits = idx.search_image(table[:1], k=8, min_distance=500)
    assert len(hits) == 8 and hits["rank"].tolist() == list(range(1, 9))
    xy = hits[[K.X, K.Y]].to_numpy(float)
    for s in hits[K.SLIDE_ID].unique():
        pts = xy[(hits[K.SLIDE_ID] == s).to_numpy()]
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(len(pts)) * 1e9
        assert (d > 500).all()


def test_factory_choice_by_size():
    from mmpath.index._faiss import choose

    assert choose(1000, 512).factory == "Flat"
    assert choose(10_000_000, 512).factory.startswith("IVF")
    assert choose(10_000_000, 512).params["nprobe"] >= 8
    assert choose(5000, 8, "HNSW8,Flat").params == {"efSearch": 128}


def test_params_override_changes_ivf_results(big_table):
    idx = mm.index.build(big_table, use_rep=REP, factory="IVF64,Flat", params={"nprobe": 1})
    exact = mm.index.build(big_table, use_rep=REP, factory="Flat")
    q = big_table.obsm[REP][:100] + 0.3
    _, Ie = exact.search_vectors(q, k=10)
    low = mm.index.recall_at_k(idx.search_vectors(q, k=10)[1], Ie)
    full = mm.index.recall_at_k(idx.search_vectors(q, k=10, params={"nprobe": 64})[1], Ie)
    assert full == pytest.approx(1.0) and low < full
