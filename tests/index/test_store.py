"""Save/load, manifest checks, atomic saves, adding tables and removing slides."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import DataError, IndexError_
from mmpath.index import _store

REP = "X_toy"
FACTORIES = ["Flat", "IVF8,Flat", "HNSW16,Flat", "IVF8,PQ8x4fs,RFlat"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_save_load_round_trip_identical(table, tmp_path, factory):
    idx = mm.index.build(table, use_rep=REP, factory=factory, params={"nprobe": 4})
    q = table.obsm[REP][::37]
    D, nbr = idx.search_vectors(q, k=7)
    hits = idx.search(q, k=7)
    idx.save(tmp_path / "a.idx")
    back = mm.index.load(tmp_path / "a.idx")
    D2, I2 = back.search_vectors(q, k=7)
    np.testing.assert_array_equal(nbr, I2)
    np.testing.assert_array_equal(D, D2)
    assert back.search(q, k=7).equals(hits)
    assert back.params == {**idx.params} and back.factory == factory
    m = json.loads((tmp_path / "a.idx" / "manifest.json").read_text())
    assert m["encoder"] == "toy_encoder" and m["embedding_key"] == REP and m["dim"] == 16
    assert m["normalisation"] == "l2" and m["n_vectors"] == 400 and m["n_slides"] == 4
    assert set(m["files"]) == {"index.faiss", "metadata.parquet"}
    assert len(m["files"]["index.faiss"]["sha256"]) == 64 and m["mmpath_version"]


def test_load_refuses_mismatch_and_damage(table, tmp_path):
    path = mm.index.build(table, use_rep=REP).save(tmp_path / "a.idx")
    mm.index.load(path, encoder="toy_encoder", dim=16, embedding_key=REP)
    with pytest.raises(IndexError_, match="encoder"):
        mm.index.load(path, encoder="conch")
    with pytest.raises(IndexError_, match="dim"):
        mm.index.load(path, dim=512)
    with pytest.raises(IndexError_, match="no index"):
        mm.index.load(tmp_path / "nothing")
    data = bytearray((path / "index.faiss").read_bytes())
    data[-1] ^= 0xFF
    (path / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="checksum"):
        mm.index.load(path)


def test_query_from_other_encoder_or_dim_is_refused(table):
    idx = mm.index.build(table, use_rep=REP)
    with pytest.raises(IndexError_, match="encoder 'uni'"):
        idx.search_vectors(table.obsm[REP][:1], k=3, encoder="uni")
    with pytest.raises(IndexError_, match="dim 8"):
        idx.search_vectors(np.ones((1, 8), np.float32), k=3)
    other = table.copy()
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    other.uns[K.UNS][K.UNS_EMBEDDINGS][REP]["encoder"] = "uni"
    with pytest.raises(IndexError_, match="encoder"):
        idx.search_image(other[:2], k=3)


def test_clear_errors(table, make):
    idx = mm.index.build(table, use_rep=REP)
    with pytest.raises(IndexError_, match="k=401 exceeds the 400"):
        idx.search_vectors(table.obsm[REP][:1], k=401)
    q = table.obsm[REP][:3].copy()
    q[1, 2] = np.nan
    with pytest.raises(IndexError_, match="NaN"):
        idx.search_vectors(q, k=3)
    bad = make(1, 10)
    bad.obsm[REP][4] = np.nan
    with pytest.raises(IndexError_, match="NaN"):
        mm.index.build(bad, use_rep=REP)
    with pytest.raises(IndexError_, match="no tiles"):
        mm.index.build(table[:0], use_rep=REP)
    with pytest.raises(IndexError_, match="filter"):
        idx.search_vectors(table.obsm[REP][:1], k=3, where="no_such_column == 1")
    idx.remove(idx.slide_ids)
    with pytest.raises(IndexError_, match="empty"):
        idx.search_vectors(table.obsm[REP][:1], k=1)


def test_interrupted_save_keeps_previous_index(table, tmp_path, monkeypatch):
    path = tmp_path / "a.idx"
    idx = mm.index.build(table, use_rep=REP)
    idx.save(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    idx.remove("S0")

    def crash(index, target):
        target.write_bytes(b"half an index")
        raise KeyboardInterrupt  # a crash mid-write

    monkeypatch.setattr(_store, "write_index", crash)
    with pytest.raises(KeyboardInterrupt):
        idx.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name != "a.idx"]  # no temp left behind
    back = mm.index.load(path)
    assert len(back) == 400 and "S0" in back.slide_ids


@pytest.mark.parametrize("factory", FACTORIES)
def test_add_and_remove_keep_ids_mapped(make, tmp_path, factory):
    a, b = make(3, 60, seed=1, prefix="A"), make(2, 60, seed=2, prefix="B")
    idx = mm.index.build(a, use_rep=REP, factory=factory, params={"nprobe": 8})
    assert idx.add(b) == 120
    assert len(idx) == 300 and idx.manifest["next_id"] == 300
    with pytest.raises(IndexError_, match="already in the index"):
        idx.add(b)
    assert idx.remove(["A1"]) == 60
    assert len(idx) == 240 and "A1" not in idx.slide_ids
    # every remaining tile is found by its own vector, under its own id and name
    for t in (a, b):
        keep = t.obs[K.SLIDE_ID].astype(str) != "A1"
        x = t.obsm[REP][keep.to_numpy()]
        hits = idx.search(x, k=1, params={"efSearch": 256, "k_factor": 64})
        assert hits["obs_name"].tolist() == list(t.obs_names[keep.to_numpy()])
        np.testing.assert_allclose(hits["score"], 1.0, atol=1e-4)
    # ids are never reused: a re-added slide gets new ids
    idx.add(a[a.obs[K.SLIDE_ID] == "A1"])
    new = idx.metadata[idx.metadata[K.SLIDE_ID] == "A1"].index
    assert new.min() == 300 and len(new) == 60
    idx.save(tmp_path / "x.idx")
    back = mm.index.load(tmp_path / "x.idx")
    assert back.metadata.equals(idx.metadata)
    hit = back.search(a.obsm[REP][60:61], k=1, params={"k_factor": 64, "efSearch": 256})
    assert hit["obs_name"].item() == a.obs_names[60]


def test_add_refuses_other_encoder_and_dim(table, make):
    idx = mm.index.build(table, use_rep=REP)
    with pytest.raises(IndexError_, match="dim"):
        idx.add(make(1, 10, dim=8, prefix="Z"))
    with pytest.raises(IndexError_, match="encoder"):
        idx.add(make(1, 10, prefix="Z", encoder="uni"))


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_memory_mapped_load(table, tmp_path, factory):
    idx = mm.index.build(table, use_rep=REP, factory=factory, params={"nprobe": 8})
    path = idx.save(tmp_path / "m.idx")
    mapped = mm.index.load(path, mmap=True, verify=False)
    q = table.obsm[REP][:5]
    np.testing.assert_array_equal(mapped.search_vectors(q, 5)[1], idx.search_vectors(q, 5)[1])


def test_gpu_request_without_gpu_is_a_clear_error(table):
    from mmpath.index._faiss import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(IndexError_, match="faiss-gpu"):
        mm.index.build(table, use_rep=REP, gpu=True)
    assert "gpu" not in repr(mm.index.build(table, use_rep=REP))  # auto: CPU here


@pytest.mark.gpu
def test_gpu_search_matches_cpu(table):
    cpu = mm.index.build(table, use_rep=REP, gpu=False)
    gpu = mm.index.build(table, use_rep=REP, gpu=True)
    q = table.obsm[REP][:5]
    np.testing.assert_array_equal(gpu.search_vectors(q, 5)[1], cpu.search_vectors(q, 5)[1])


@pytest.mark.parametrize("factory", ["IVF8,PQ8x4fs,RFlat", "IVF8,PQ8,Refine(SQ8)"])
def test_refine_removal_in_place_equals_re_adding(make, factory):
    import faiss

    from mmpath.index import _faiss as F

    t = make(4, 150, seed=3)
    idx = mm.index.build(t, use_rep=REP, factory=factory, params={"nprobe": 8, "k_factor": 20})
    ref = faiss.clone_index(idx.index)
    gone = idx.metadata.index[idx.metadata[K.SLIDE_ID].isin(["S1", "S3"])].to_numpy()
    assert idx.remove(["S1", "S3"]) == 300  # in place: faiss' IndexRefine cannot remove
    assert F.readd_without(ref, gone) == 300  # the slow way: re-add the kept vectors
    q = t.obsm[REP][::7]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    params = {"nprobe": 8, "k_factor": 20}
    D, nbr = idx.search_vectors(q, 5, params=params)
    F.apply_params(ref, params)
    D2, nbr2 = ref.search(q, 5)
    np.testing.assert_array_equal(nbr, nbr2)
    np.testing.assert_allclose(D, D2, atol=1e-6)
    assert not np.isin(nbr, gone).any()


def test_same_table_twice_and_slide_tables_are_refused(table, make):
    with pytest.raises(IndexError_, match="appear more than once.*passed twice"):
        mm.index.build([table, table], use_rep=REP)
    idx = mm.index.build(make(1, 10), use_rep=REP)
    with pytest.raises(IndexError_, match="appear more than once"):
        idx.add([table, table])
    slide_table = ad.AnnData(obs=pd.DataFrame({"n_tiles": [3]}, index=["S0"]))
    with pytest.raises(DataError, match="table 2 of 2 is a slide table"):
        mm.index.build([table, slide_table], use_rep=REP)


def _edit_manifest(path, edit):
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("files"), "lacks files"),
        (lambda m: m.pop("n_vectors"), "lacks n_vectors"),
        (lambda m: m.update(format_version="abc"), "malformed format_version"),
        (lambda m: m["files"]["index.faiss"].pop("bytes"), "no valid checksum for index.faiss"),
        (lambda m: m["files"].pop("index.faiss"), "no valid checksum for index.faiss"),
        (lambda m: m["files"]["metadata.parquet"].update(sha256=None), "no valid checksum"),
        (lambda m: m.update(dim="x"), "malformed dim"),
    ],
)
def test_manifest_without_required_fields_or_checksums_is_refused(table, tmp_path, edit, match):
    """Editing the manifest cannot switch the integrity check off (issue 10 item 4)."""
    idx = mm.index.build(table, use_rep=REP)
    path = idx.save(tmp_path / "a.idx")
    _edit_manifest(path, edit)
    with pytest.raises(IndexError_, match=match) as err:
        mm.index.load(path)
    assert "\n" not in str(err.value)


def test_flipped_bytes_with_checksums_removed_are_refused(table, tmp_path):
    idx = mm.index.build(table, use_rep=REP)
    path = idx.save(tmp_path / "a.idx")
    raw = bytearray((path / "index.faiss").read_bytes())
    raw[-400:-200] = bytes(b ^ 0xFF for b in raw[-400:-200])
    (path / "index.faiss").write_bytes(bytes(raw))
    _edit_manifest(path, lambda m: m.pop("files"))
    with pytest.raises(IndexError_, match="lacks files"):
        mm.index.load(path)
