"""Adding slides to a saved on-disk index one at a time: equal to a build over all of them, and
each add costs O(new) in the work that grows with the index (no existing table re-read, no
existing list rehashed, the metadata store appended to once per add, not once per table)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath.index import _meta, _source, _store

from .conftest import REP, make_table

N, PER, DIM = 6, 150, 32
IVF = "IVF16,Flat"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("add")
    out = []
    for i in range(N):
        t = make_table(1, PER, DIM, seed=300 + i, n_clusters=24, prefix=f"A{i}_")
        out.append(root / f"a{i}.h5ad")
        mm.io.write_h5ad(t, out[-1])
    return out


def test_adding_slides_one_at_a_time_equals_a_build_over_all(paths, tmp_path, monkeypatch):
    params = {"nprobe": 16}  # every list: exact, whatever the quantizer trained on
    out = tmp_path / "i"
    mm.index.build(paths[:1], use_rep=REP, factory=IVF, params=params, out=out)
    hashed, read, appends = [], [], []
    real_sha, real_read, real_append = _store.sha256, _source.read_table, _meta.MetaStore.append
    monkeypatch.setattr(_store, "sha256", lambda p: hashed.append(p.name) or real_sha(p))
    monkeypatch.setattr(_source, "read_table", lambda p, r: read.append(p) or real_read(p, r))
    monkeypatch.setattr(
        _meta.MetaStore, "append", lambda self, df: appends.append(len(df)) or real_append(self, df)
    )
    for k, p in enumerate(paths[1:], start=1):
        hashed.clear(), read.clear(), appends.clear()
        mm.index.add(out, [p])
        assert read == [p]  # only the new table is read
        assert appends == [PER]  # one metadata append per add
        segs = [h for h in hashed if h.startswith("seg-")]
        assert segs == [f"seg-{k:05d}.faiss", f"seg-{k:05d}.ivfdata"]  # only the new segment
    m = mm.index.read_manifest(out)
    assert m["segments"] == [f"seg-{k:05d}" for k in range(N)]
    # two tables in one add: still one metadata append
    appends.clear()
    two = tmp_path / "two"
    mm.index.build(paths[:4], use_rep=REP, factory=IVF, params=params, out=two)
    mm.index.add(two, paths[4:])
    assert appends == [2 * PER]
    monkeypatch.undo()
    full = mm.index.build(paths, use_rep=REP, factory=IVF, params=params)
    q = np.concatenate([mm.io.read_h5ad(p).obsm[REP][:10] for p in paths])
    for got in (mm.index.load(out), mm.index.load(two)):  # verifying loads: checksums hold
        assert len(got) == len(full) and got.slide_ids == full.slide_ids
        np.testing.assert_array_equal(got.search_vectors(q, 10)[1], full.search_vectors(q, 10)[1])
        pd.testing.assert_frame_equal(got.search(q, 5), full.search(q, 5))
        pd.testing.assert_frame_equal(got.metadata, full.metadata)


def test_damaged_list_is_still_caught_after_an_add(paths, tmp_path):
    out = tmp_path / "i"
    mm.index.build(paths[:2], use_rep=REP, factory=IVF, out=out)
    lists = out / "seg-00000.ivfdata"
    data = bytearray(lists.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    lists.write_bytes(bytes(data))
    mm.index.add(out, paths[2:3])  # not rehashed here, its recorded checksum is carried on
    with pytest.raises(mm.errors.IndexError_, match="seg-00000.ivfdata .*checksum"):
        mm.index.load(out)
