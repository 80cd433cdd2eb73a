"""Removing slides from an index, on disk (tombstones over read-only lists) and in memory: the
results equal an index built without those slides, the change is atomic, and the files say so."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.cli import main
from mmpath.errors import IndexError_
from mmpath.index import _ondisk, _store

from .conftest import REP, make_table

N, PER, DIM = 6, 200, 32
IVF = "IVF16,Flat"
EXHAUSTIVE = {"nprobe": 16}  # every list: the IVF answers exactly, whatever it trained on


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    tables, paths = [], []
    for i in range(N):
        t = make_table(1, PER, DIM, seed=200 + i, n_clusters=24, prefix=f"S{i}_")
        t.obs["batch"] = i % 3
        paths.append(root / f"s{i}.h5ad")
        mm.io.write_h5ad(t, paths[-1])
        tables.append(t)
    return tables, paths


def _q(tables, n: int = 12) -> np.ndarray:
    return np.concatenate([t.obsm[REP][:n] for t in tables])


def _same_hits(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same tiles (by name: a rebuild renumbers ids), same scores, same metadata."""
    np.testing.assert_array_equal(a["obs_name"].to_numpy(), b["obs_name"].to_numpy())
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-5)
    cols = ["query", "rank", K.SLIDE_ID, K.X, K.Y, "batch"]
    pd.testing.assert_frame_equal(
        a[cols].reset_index(drop=True).astype({K.SLIDE_ID: str}),
        b[cols].reset_index(drop=True).astype({K.SLIDE_ID: str}),
    )


def _two_segments(paths, out, params=EXHAUSTIVE):
    mm.index.build(paths[:4], use_rep=REP, factory=IVF, params=params, workers=2, out=out)
    return mm.index.add(out, paths[4:])


def test_on_disk_remove_equals_a_rebuild_without_those_slides(slides, tmp_path):
    tables, paths = slides
    out = tmp_path / "i"
    _two_segments(paths, out)
    lists = {p.name: p.stat().st_ino for p in out.glob("seg-*")}
    gone = ["S1_0", "S4_0"]  # one slide of each segment
    idx = mm.index.remove(out, gone)
    m = mm.index.read_manifest(out)
    assert m["format_version"] == 3 and m["n_removed"] == 2 * PER and m["n_vectors"] == 4 * PER
    assert m["segments"] == ["seg-00000", "seg-00001"]
    # the lists were not rewritten: the new save hard-links the same files
    assert {p.name: p.stat().st_ino for p in out.glob("seg-*")} == lists
    kept = [p for i, p in enumerate(paths) if i not in (1, 4)]
    ref = mm.index.build(kept, use_rep=REP, factory=IVF, params=EXHAUSTIVE)
    q = _q(tables)
    back = mm.index.load(out)
    for got in (idx, back):
        assert len(got) == len(ref) and sorted(got.slide_ids) == sorted(ref.slide_ids)
        _same_hits(got.search(q, 10), ref.search(q, 10))
        where = "batch >= 1"
        _same_hits(got.search(q, 10, where=where), ref.search(q, 10, where=where))
        D, ids = got.search_vectors(q, len(got))  # every live tile, none removed, no -1
        assert (ids >= 0).all() and not np.isin(got._meta.slides_of(ids[0]), gone).any()
        assert got.search_slides(q[:30], k=3)[K.SLIDE_ID].tolist() == (
            ref.search_slides(q[:30], k=3)[K.SLIDE_ID].tolist()
        )
    with pytest.raises(IndexError_, match=f"exceeds the {4 * PER} tiles"):
        back.search_vectors(q, 4 * PER + 1)


def test_on_disk_remove_equals_in_memory_remove_at_any_nprobe(slides, tmp_path):
    tables, paths = slides
    probe = {"nprobe": 3}
    disk = mm.index.build(paths, use_rep=REP, factory=IVF, params=probe, workers=2,
                          out=tmp_path / "d")  # fmt: skip
    ram = mm.index.build(tables, use_rep=REP, factory=IVF, params=probe)
    assert mm.index.remove(disk, ["S2_0", "S3_0"]) is disk
    assert ram.remove(["S2_0", "S3_0"]) == 2 * PER
    q = _q(tables)
    D1, I1 = ram.search_vectors(q, 10)
    D2, I2 = disk.search_vectors(q, 10)  # same quantizer, same lists, tombstones skipped
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=1e-5)
    pd.testing.assert_frame_equal(disk.search(q, 5), ram.search(q, 5))


def test_emptied_segment_is_dropped_and_unsaved_tiles_removed_for_real(slides, tmp_path):
    tables, paths = slides
    out = tmp_path / "i"
    _two_segments(paths, out)
    mm.index.remove(out, ["S0_0"])
    idx = mm.index.remove(out, ["S4_0", "S5_0"])  # every tile of segment 1
    m = mm.index.read_manifest(out)
    assert m["segments"] == ["seg-00000"] and m["n_removed"] == PER
    assert not (out / "seg-00001.ivfdata").exists() and len(idx) == 3 * PER
    # tiles added since the last save are removed from the in-memory segment, no tombstones
    idx.add(paths[4:5])
    assert len(idx) == 4 * PER and idx.remove("S4_0") == PER and len(idx._parts.removed) == PER
    # a removed slide can come back (replaced), with new ids, and is found again
    assert idx.add(paths[5:6]) == PER
    idx.save(out)
    back = mm.index.load(out)
    assert sorted(back.slide_ids) == ["S1_0", "S2_0", "S3_0", "S5_0"] and len(back) == 4 * PER
    hits = back.search(tables[5].obsm[REP][:5], 1)
    assert hits[K.SLIDE_ID].astype(str).eq("S5_0").all() and (hits["score"] > 0.999).all()
    ref = mm.index.build([paths[i] for i in (1, 2, 3, 5)], use_rep=REP, factory=IVF,
                         params=EXHAUSTIVE)  # fmt: skip
    _same_hits(back.search(_q(tables), 8), ref.search(_q(tables), 8))
    # removing every slide leaves an empty, loadable index
    empty = mm.index.remove(out, back.slide_ids)
    assert len(empty) == 0 and len(mm.index.load(out)) == 0


def test_remove_refusals_and_crashes_leave_the_index_unchanged(slides, tmp_path, monkeypatch):
    _, paths = slides
    out = tmp_path / "i"
    _two_segments(paths, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(IndexError_, match=r"\['nope'\] are not in the index"):
        mm.index.remove(out, ["S1_0", "nope"])

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_ondisk.np, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        mm.index.remove(out, ["S1_0"])
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    mm.index.remove(out, ["S1_0"])
    tomb = out / _ondisk.TOMBSTONES
    tomb.write_bytes(tomb.read_bytes()[:-8])  # a damaged tombstone file is refused
    with pytest.raises(IndexError_, match="removed.npy .*checksum"):
        mm.index.load(out)
    m = json.loads((out / "manifest.json").read_text())
    m["n_removed"] = -1
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="malformed n_removed"):
        mm.index.load(out)
    assert _store.FORMAT_VERSION == 3  # older readers (2) refuse a tombstoned index


def test_cli_index_remove_on_disk(slides, tmp_path, capsys):
    _, paths = slides
    out = tmp_path / "i"
    _two_segments(paths, out)
    assert main(["index", "remove", str(out), "S0_0", "S5_0"]) == 0
    text = capsys.readouterr().out
    assert f"removed {2 * PER} tiles of 2 slide(s); the index holds {4 * PER} tiles" in text
    assert f"{2 * PER} removed tile(s) kept as tombstones (--compact rewrites them)" in text
    assert main(["-q", "index", "remove", str(out), "S0_0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the index" in err[0]
    assert main(["index", "info", str(out)]) == 0
    assert f"n_removed       {2 * PER} (skipped by searches" in capsys.readouterr().out
    assert main(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_vectors"] == 4 * PER and info["n_removed"] == 2 * PER


def test_compact_rewrites_segments_without_removed_tiles(slides, tmp_path, monkeypatch, capsys):
    tables, paths = slides
    out = tmp_path / "i"
    _two_segments(paths, out)
    mm.index.remove(out, ["S1_0"])  # a tombstone first, compacted later
    monkeypatch.setattr(_ondisk, "BLOCK_BYTES", 20_000)  # several scratch blocks per segment
    idx = mm.index.remove(out, ["S4_0"], compact=True)
    m = mm.index.read_manifest(out)
    assert m["n_removed"] == 0 and m["format_version"] == 2 and len(idx) == 4 * PER
    assert len(m["segments"]) == 2 and not set(m["segments"]) & {"seg-00000", "seg-00001"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*m["files"], "manifest.json"]
    )  # no scratch part left, no tombstone file
    kept = [p for i, p in enumerate(paths) if i not in (1, 4)]
    ref = mm.index.build(kept, use_rep=REP, factory=IVF, params=EXHAUSTIVE)
    q = _q(tables)
    back = mm.index.load(out)
    assert back._parts.ntotal == 4 * PER  # the lists hold only live tiles now
    _same_hits(back.search(q, 10), ref.search(q, 10))
    # then removing more still works (tombstones over the rewritten, non-contiguous segment)
    back = mm.index.remove(out, ["S0_0"])
    assert mm.index.read_manifest(out)["n_removed"] == PER and len(back) == 3 * PER
    ref = mm.index.build([paths[i] for i in (2, 3, 5)], use_rep=REP, factory=IVF,
                         params=EXHAUSTIVE)  # fmt: skip
    _same_hits(back.search(q, 10), ref.search(q, 10))
    # --compact alone compacts the earlier removals; a second time there is nothing to do
    before = mm.index.read_manifest(out)["segments"]
    assert main(["index", "remove", str(out), "--compact"]) == 0
    assert f"compacted {PER} removed tile(s) out of the lists; the index holds {3 * PER} tiles" in (
        capsys.readouterr().out
    )
    m = mm.index.read_manifest(out)
    assert m["n_removed"] == 0 and m["segments"] != before
    _same_hits(mm.index.load(out).search(q, 10), ref.search(q, 10))
    assert main(["index", "remove", str(out), "--compact"]) == 0  # nothing to do: unchanged
    assert mm.index.read_manifest(out)["segments"] == m["segments"]
    assert main(["-q", "index", "remove", str(out)]) == 2  # neither slides nor --compact


def test_segment_bounds_are_recorded_so_a_removal_reads_no_list(slides, tmp_path, monkeypatch):
    _, paths = slides
    out = tmp_path / "i"
    _two_segments(paths, out)
    m = mm.index.read_manifest(out)
    assert m["segment_bounds"] == {
        "seg-00000": [0, 4 * PER - 1],
        "seg-00001": [4 * PER, 6 * PER - 1],
    }

    def no_scan(self):
        raise AssertionError("a segment's ids were read from its lists")

    monkeypatch.setattr(_ondisk.Segment, "ids", no_scan)
    idx = mm.index.remove(out, ["S0_0", "S5_0"])  # contiguous segments: bounds suffice
    assert len(idx) == 4 * PER
