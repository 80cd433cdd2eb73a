"""Indexes built from table files and archives: streamed reads, parallel IVF blocks merged into
on-disk segments, add without a rebuild, metadata kept on disk, atomic builds and checksums."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.cli import main
from mmpath.errors import DataError, IndexError_
from mmpath.index import _store

from .conftest import REP, make_table

N_SLIDES, PER, DIM = 6, 400, 32


def _slide(i: int, *, dim: int = DIM, prefix: str = "S", per: int = PER):
    t = make_table(1, per, dim, seed=100 + i, n_clusters=24, prefix=f"{prefix}{i}_")
    t.obs["batch"] = i % 3  # a label column read from parquet for the hits
    return t


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Six one-slide tables written as .h5ad files (an archive folder) and in memory."""
    root = tmp_path_factory.mktemp("archive")
    tables, paths = [], []
    for i in range(N_SLIDES):
        t = _slide(i)
        p = root / "tables" / f"slide{i}.h5ad"
        p.parent.mkdir(exist_ok=True)
        mm.io.write_h5ad(t, p)
        tables.append(t)
        paths.append(p)
    return root, tables, paths


def _queries(tables, n: int = 15) -> np.ndarray:
    return np.concatenate([t.obsm[REP][:n] for t in tables])


def _exact(tables, q, k):
    x = np.concatenate([t.obsm[REP] for t in tables])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.argsort(-(qn @ x.T), axis=1, kind="stable")[:, :k]


def _recall(found, truth) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def test_on_disk_ivf_equals_in_memory_and_exact(archive, tmp_path):
    _, tables, paths = archive
    q = _queries(tables)
    factory = "IVF16,Flat"
    ram = mm.index.build(tables, use_rep=REP, factory=factory, params={"nprobe": 4})
    disk = mm.index.build(
        paths, use_rep=REP, factory=factory, params={"nprobe": 4}, workers=2, out=tmp_path / "a"
    )
    assert disk.on_disk and not ram.on_disk and len(disk) == len(ram) == N_SLIDES * PER
    D1, I1 = ram.search_vectors(q, 10)
    D2, I2 = disk.search_vectors(q, 10)
    # same trained quantizer (same seeded sample), same lists: the same neighbours
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=1e-5)
    truth = _exact(tables, q, 10)
    # probing every list makes IVF,Flat exact: on disk equals brute force
    _, I3 = disk.search_vectors(q, 10, params={"nprobe": 16})
    assert _recall(I3, truth) == 1.0
    # hits carry the same metadata (labels joined from parquet), filters work
    h1 = ram.search(q[:20], 5, where="organ == 'colon' and batch >= 1")
    h2 = disk.search(q[:20], 5, where="organ == 'colon' and batch >= 1")
    pd.testing.assert_frame_equal(h1, h2)
    assert set(h2["organ"]) == {"colon"} and (h2["batch"] >= 1).all()
    assert disk.search_slides(q[:30], k=2)[K.SLIDE_ID].tolist() == (
        ram.search_slides(q[:30], k=2)[K.SLIDE_ID].tolist()
    )


def test_exact_from_files_equals_in_memory(archive):
    _, tables, paths = archive
    q = _queries(tables)
    ram = mm.index.build(tables, use_rep=REP)
    files = mm.index.build(paths, use_rep=REP)  # small: Flat, in memory, table by table
    assert files.factory == "Flat" and not files.on_disk
    np.testing.assert_array_equal(ram.search_vectors(q, 10)[1], files.search_vectors(q, 10)[1])
    np.testing.assert_array_equal(ram.search_vectors(q, 10)[1], _exact(tables, q, 10))
    pd.testing.assert_frame_equal(ram.metadata, files.metadata)


class _View:
    """An archive view as the archive layer gives it (duck-typed: only table_paths())."""

    def __init__(self, paths):
        self._paths = paths

    def table_paths(self):
        return list(self._paths)


def test_building_from_files_streams_one_table_at_a_time(archive, monkeypatch):
    import anndata as ad

    from mmpath.index import _tables as T

    _, tables, paths = archive
    real = T.collect
    seen = []

    def one_table_only(tabs, *a, **kw):
        assert len(tabs) == 1, "collect called on several tables at once"
        seen.append(tabs[0].n_obs)
        return real(tabs, *a, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("a whole table or archive was read or concatenated")

    monkeypatch.setattr(T, "collect", one_table_only)
    monkeypatch.setattr(ad, "concat", forbidden)
    monkeypatch.setattr(ad, "read_h5ad", forbidden)
    monkeypatch.setattr(mm.io, "concat", forbidden)
    monkeypatch.setattr(mm.io, "read_h5ad", forbidden)
    a = mm.index.build(_View(paths), use_rep=REP, factory="IVF16,Flat", workers=1)
    b = mm.index.build(_View(paths), use_rep=REP)
    assert a.on_disk and len(a) == len(b) == N_SLIDES * PER
    assert seen == [PER] * (2 * N_SLIDES)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_add_equals_full_rebuild(archive, tmp_path, factory):
    _, tables, paths = archive
    q = _queries(tables)
    exhaustive = {"nprobe": 16}  # every list: the IVF answers exactly, whatever it trained on
    mm.index.build(paths[:4], use_rep=REP, factory=factory, params=exhaustive, out=tmp_path / "i")
    added = mm.index.add(tmp_path / "i", paths[4:])
    full = mm.index.build(paths, use_rep=REP, factory=factory, params=exhaustive)
    back = mm.index.load(tmp_path / "i")
    assert len(back) == len(full) == len(added) and back.slide_ids == full.slide_ids
    for idx in (added, back):
        np.testing.assert_array_equal(idx.search_vectors(q, 10)[1], full.search_vectors(q, 10)[1])
        pd.testing.assert_frame_equal(idx.search(q, 5), full.search(q, 5))
    if factory != "Flat":
        m = mm.index.read_manifest(tmp_path / "i")
        assert m["format_version"] == 2 and len(m["segments"]) == 2  # appended, not rewritten


def test_add_refusals_leave_the_index_unchanged(archive, tmp_path):
    root, tables, paths = archive
    out = tmp_path / "i"
    mm.index.build(paths[:3], use_rep=REP, factory="IVF16,Flat", out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other_dim = tmp_path / "dim.h5ad"
    mm.io.write_h5ad(_slide(7, dim=16, prefix="D"), other_dim)
    with pytest.raises(IndexError_, match="dim 16 but the index holds 32"):
        mm.index.add(out, [other_dim])
    with pytest.raises(IndexError_, match=r"\['S1_0'\] are already in the index"):
        mm.index.add(out, [paths[1]])
    other_enc = _slide(8, prefix="E")
    other_enc.uns[K.UNS][K.UNS_EMBEDDINGS][REP]["encoder"] = "uni"
    mm.io.write_h5ad(other_enc, tmp_path / "enc.h5ad")
    with pytest.raises(IndexError_, match="encoder"):
        mm.index.add(out, [paths[4], tmp_path / "enc.h5ad"])  # nothing of the batch is added
    no_rep = _slide(9, prefix="R")
    no_rep.obsm = {"X_other": no_rep.obsm[REP]}
    mm.io.write_h5ad(no_rep, tmp_path / "rep.h5ad")
    with pytest.raises(DataError, match="no obsm\\['X_toy'\\]"):
        mm.index.add(out, [tmp_path / "rep.h5ad"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(mm.index.load(out)) == 3 * PER


def test_manifest_checksums_cover_every_file(archive, tmp_path):
    _, _, paths = archive
    out = tmp_path / "i"
    mm.index.build(paths[:2], use_rep=REP, factory="IVF16,Flat", out=out)
    mm.index.add(out, paths[2:3])
    m = json.loads((out / "manifest.json").read_text())
    on_disk = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    assert {"seg-00000.ivfdata", "seg-00001.ivfdata", "index.faiss"} <= on_disk
    for name, rec in m["files"].items():
        assert rec["sha256"] == _store.sha256(out / name)
        assert rec["bytes"] == (out / name).stat().st_size
    lists = out / "seg-00000.ivfdata"
    data = bytearray(lists.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lists.write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="seg-00000.ivfdata .*checksum"):
        mm.index.load(out)
    m["files"].pop("seg-00001.ivfdata")
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="no valid checksum for seg-00001.ivfdata"):
        mm.index.load(out)


def test_killed_build_keeps_the_previous_index(archive, tmp_path):
    _, tables, paths = archive
    out = tmp_path / "i"
    old = mm.index.build(paths[:2], use_rep=REP, factory="IVF16,Flat", out=out)
    q = _queries(tables[:2])
    want = old.search_vectors(q, 5)[1]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = textwrap.dedent(
        f"""
        import os, signal
        import mmpath as mm
        from mmpath.index import _meta
        def die(*a, **k):  # kill -9 after the blocks and segment are written
            os.kill(os.getpid(), signal.SIGKILL)
        _meta.merge_parts = die
        mm.index.build({[str(p) for p in paths]!r}, use_rep={REP!r}, factory="IVF16,Flat",
                       workers=2, out={str(out)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(mm.__file__).parents[1])}
    r = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert r.returncode == -9
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    np.testing.assert_array_equal(mm.index.load(out).search_vectors(q, 5)[1], want)
    leftovers = list(tmp_path.glob(".i.build-*"))
    assert leftovers  # the killed build's scratch folder, next to the index
    mm.index.build(paths[:3], use_rep=REP, factory="IVF16,Flat", out=out)
    assert not list(tmp_path.glob(".i.build-*")) and len(mm.index.load(out)) == 3 * PER


def test_metadata_stays_on_disk_and_filters_read_only_their_columns(archive, monkeypatch):
    from mmpath.index import _meta

    _, tables, paths = archive
    q = _queries(tables)
    ram = mm.index.build(tables, use_rep=REP, factory="IVF16,Flat", params={"nprobe": 4})
    ram.save(Path(paths[0]).parents[1] / "meta.idx")
    monkeypatch.setattr(_store, "MEMORY_MAX", 0)
    disk = mm.index.load(Path(paths[0]).parents[1] / "meta.idx")
    store = disk._meta
    assert store._frame is None and store.codes.dtype == np.int32 and store.x.dtype == np.int32
    read = []
    real_chunks = _meta.MetaStore.chunks

    def spy(self, columns=None):
        read.append(columns)
        return real_chunks(self, columns)

    monkeypatch.setattr(_meta.MetaStore, "chunks", spy)
    where = "batch == 2 or organ == 'lung'"
    pd.testing.assert_frame_equal(disk.search(q, 5, where=where), ram.search(q, 5, where=where))
    assert read == [["batch", "organ"]]
    got = disk.search(q, 5, drop_neighbours=0, query_tiles=ram._meta.rows(np.arange(len(q))))
    assert len(got) == 5 * len(q)
    pd.testing.assert_frame_equal(disk.slide_metadata(), ram.slide_metadata())


def test_merge_into_equals_faiss_merge_ondisk(archive, tmp_path):
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    from mmpath.index import _ondisk

    _, tables, _ = archive
    x = np.concatenate([t.obsm[REP] for t in tables]).astype(np.float32)
    faiss.normalize_L2(x)
    header = faiss.index_factory(DIM, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    header.train(x)
    files = []
    for b in range(3):
        blk = faiss.clone_index(header)
        sl = slice(b * 800, (b + 1) * 800)
        blk.add_with_ids(x[sl], np.arange(len(x))[sl].astype(np.int64))
        files.append(str(tmp_path / f"b{b}.faiss"))
        faiss.write_index(blk, files[-1])
    ref = faiss.clone_index(header)
    merge_ondisk(ref, files, str(tmp_path / "ref.ivfdata"))
    srcs = [faiss.read_index(f) for f in files]
    ours = _ondisk.merge_into(
        header, [faiss.extract_index_ivf(s).invlists for s in srcs], tmp_path / "ours.ivfdata"
    )
    ref.nprobe = ours.nprobe = 5
    D1, I1 = ref.search(x[:100], 10)
    D2, I2 = ours.search(x[:100], 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def test_text_search_over_an_on_disk_index(colour_clip, tmp_path):
    from mmpath.index._query import encode_images

    from .test_queries import WORDS, _tile

    enc = colour_clip()
    rng = np.random.default_rng(0)
    paths, tables = [], []
    for s in range(3):
        colours = rng.choice(WORDS, 40)
        imgs = [_tile(c, rng) for c in colours]
        t = make_table(1, 40, 3, prefix=f"C{s}_", rep="X_colour_clip", encoder=None)
        t.obs["colour"] = colours
        t.obsm["X_colour_clip_proj"] = encode_images(imgs, enc, proj=True)
        t.uns[K.UNS][K.UNS_EMBEDDINGS] = {
            "X_colour_clip": {"encoder": "colour_clip", "proj_key": "X_colour_clip_proj"}
        }
        mm.io.write_h5ad(t, tmp_path / f"c{s}.h5ad")
        paths.append(tmp_path / f"c{s}.h5ad")
        tables.append(t)
    key = "X_colour_clip_proj"
    disk = mm.index.build(paths, use_rep=key, factory="IVF4,Flat", workers=2, out=tmp_path / "t")
    ram = mm.index.build(tables, use_rep=key, factory="IVF4,Flat")
    hits = disk.search_text(["a red tile", "blue"], k=10, encoder=enc)
    pd.testing.assert_frame_equal(hits, ram.search_text(["a red tile", "blue"], k=10, encoder=enc))
    assert hits.loc[hits["query"] == 0, "colour"].eq("red").all()


def test_cli_build_add_search_over_an_archive_folder(archive, tmp_path, capsys):
    root, tables, paths = archive
    folder = tmp_path / "arch"
    (folder / "a").mkdir(parents=True)
    for p in paths[:4]:
        os.link(p, folder / "a" / p.name)
    st = mm.io.read_h5ad(paths[0])[:0].copy()
    out = tmp_path / "arch.idx"
    args = ["index", "build", str(folder), "--use-rep", REP, "-o", str(out)]
    assert main([*args, "--workers", "2", "--factory", "IVF16,Flat", "--param", "nprobe=4"]) == 0
    text = capsys.readouterr().out
    assert f"indexed {4 * PER} tiles of 4 slide(s)" in text
    assert "(on disk, 2 block(s) added by 2 process(es))" in text
    new = tmp_path / "new"
    new.mkdir()
    for p in paths[4:]:
        os.link(p, new / p.name)
    mm.io.write_h5ad(st, new / "empty.h5ad")  # an empty table is skipped with a warning
    assert main(["index", "add", str(out), str(new)]) == 0
    captured = capsys.readouterr()
    assert f"holds {N_SLIDES * PER} tiles of {N_SLIDES} slide(s)" in captured.out
    assert "empty" in captured.err
    assert main(["-q", "index", "add", str(out), str(paths[5])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already in the index" in err[0]
    assert main(["search", str(out), "--tiles", str(paths[5]), "--rows", "0:3", "-k", "4",
                 "--json"]) == 0  # fmt: skip
    hits = pd.DataFrame(json.loads(capsys.readouterr().out))
    assert len(hits) == 12 and (hits.groupby("query")["score"].max() > 0.999).all()
    assert set(hits.loc[hits["rank"] == 1, K.SLIDE_ID]) == {"S5_0"}


def test_cli_build_says_how_many_processes_ran(archive, tmp_path, capsys):
    _, _, paths = archive
    args = ["index", "build", "--use-rep", REP, "--workers", "2"]
    assert main([*args, str(paths[0]), str(paths[1]), "-o", str(tmp_path / "f")]) == 0
    text = capsys.readouterr().out  # Flat: one process, whatever --workers says
    assert "(in memory, one process; 1 of --workers 2 used: 'Flat' is built in memory)" in text
    assert main([*args, str(paths[0]), "--factory", "IVF8,Flat", "-o", str(tmp_path / "i")]) == 0
    text = capsys.readouterr().out  # one table: one block, one process
    assert "(on disk, 1 block(s) added by 1 process(es); 1 of --workers 2 used: a single" in text


def test_damaged_tiles_are_left_out_of_a_file_build(tmp_path):
    tables, paths = [], []
    for i in range(3):
        t = _slide(i, per=200)
        t.obs[K.TILE_OK] = np.arange(t.n_obs) % 7 != 3  # every 7th tile could not be read
        paths.append(tmp_path / f"d{i}.h5ad")
        mm.io.write_h5ad(t, paths[-1])
        tables.append(t)
    ram = mm.index.build(tables, use_rep=REP, factory="IVF8,Flat", params={"nprobe": 8})
    disk = mm.index.build(paths, use_rep=REP, factory="IVF8,Flat", params={"nprobe": 8},
                          workers=2)  # fmt: skip
    assert len(disk) == len(ram) == sum(int(t.obs[K.TILE_OK].sum()) for t in tables)
    q = _queries(tables, 10)
    pd.testing.assert_frame_equal(disk.search(q, 5), ram.search(q, 5))
    assert (
        not disk.search(q, 50)["obs_name"]
        .isin([n for t in tables for n in t.obs_names[~t.obs[K.TILE_OK].to_numpy()]])
        .any()
    )
