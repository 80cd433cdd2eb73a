"""The archive pipeline in-process (workers=0): outputs, resume, changes, locks, faults."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath.errors import ArchiveError, ConfigError, EngineError

from .archive_helpers import CONFIG, CORRUPT, make_slide, table_bytes


def run(slides, out, **kw):
    return mm.archive.run(slides, out, config=CONFIG, workers=0, **kw)


def test_run_writes_one_table_per_slide_and_resumes(few_slides, tmp_path):
    out = tmp_path / "arc"
    table = run(few_slides, out)
    assert list(table.slide_id) == ["s001", "s002", "s003"]
    assert (table.state == "done").all() and (table.action == "ran").all()
    for sid, n in zip(table.slide_id, table.n_tiles):
        tiles = mm.io.read_h5ad(out / "tables" / f"{sid}.h5ad")
        assert tiles.n_obs == n > 5
        assert tiles.obsm["X_tiny_vit"].shape == (n, 64)
        assert tiles.obsm["X_tiny_vit"].dtype == np.float32
        assert set(tiles.obs.slide_id) == {sid}
        rec = json.loads((out / "slides" / f"{sid}.json").read_text())
        assert rec["state"] == "done" and rec["n_tiles"] == n
        assert rec["encoders"]["tiny_vit"]["weights_fingerprint"]
        assert rec["mmpath_version"] == mm.__version__
        assert rec["config"]["tiling"]["size"] == 64
        assert {"open", "tissue", "tile", "embed:tiny_vit", "write", "total"} <= set(rec["timings"])
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["slide_id"] for r in manifest] == ["s001", "s002", "s003"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "tables").glob("*.h5ad")}

    again = run(few_slides, out)
    assert (again.action == "skipped").all() and (again.state == "done").all()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "tables").glob("*.h5ad")} == mtimes


def test_archive_view_and_status(few_slides, tmp_path):
    out = tmp_path / "arc"
    run(few_slides, out)
    arc = mm.archive.open(out)
    assert arc.slide_ids == ["s001", "s002", "s003"] and len(arc) == 3
    assert [p.name for p in arc.table_paths()] == ["s001.h5ad", "s002.h5ad", "s003.h5ad"]
    sizes = [t.n_obs for t in arc.iter_tables()]
    cohort = arc.to_adata()
    assert cohort.n_obs == sum(sizes) and cohort.obs_names.is_unique
    assert set(cohort.uns["mmpath"]["slides"]) == {"s001", "s002", "s003"}
    assert arc.to_adata(["s002"]).n_obs == sizes[1]
    with pytest.raises(ArchiveError, match="not done"):
        arc.table_paths(["nope"])
    st = mm.archive.status(out)
    assert list(st.state) == ["done"] * 3 and (st.encoders == "X_tiny_vit").all()
    with pytest.raises(ArchiveError, match="not an archive folder"):
        mm.archive.open(tmp_path)


def test_csv_input_mpp_override_and_metadata(few_slides, tmp_path):
    csv = tmp_path / "slides.csv"
    pd.DataFrame(
        {
            "path": ["slides/s001.tif", str(few_slides / "s002.tif")],
            "slide_id": ["case-1", "case-2"],
            "mpp": [2.0, None],
            "diagnosis": ["tumor", "normal"],
            "age": [61, 47],
        }
    ).to_csv(csv, index=False)
    out = tmp_path / "arc"
    table = run(csv, out, slide_mpp=2.0)
    assert list(table.slide_id) == ["case-1", "case-2"] and (table.state == "done").all()
    t1 = mm.io.read_h5ad(out / "tables" / "case-1.h5ad")
    assert set(t1.obs.diagnosis) == {"tumor"} and set(t1.obs.age) == {61}
    assert t1.uns["mmpath"]["slides"]["case-1"]["mpp"] == 2.0
    # a metadata change re-joins obs without re-embedding
    before = table_bytes(out, "case-1")
    df = pd.read_csv(csv)
    df.loc[0, "diagnosis"] = "stroma"
    df.to_csv(csv, index=False)
    again = run(csv, out, slide_mpp=2.0)
    assert list(again.action) == ["ran", "skipped"]
    t1 = mm.io.read_h5ad(out / "tables" / "case-1.h5ad")
    assert set(t1.obs.diagnosis) == {"stroma"} and table_bytes(out, "case-1") == before
    rec = json.loads((out / "slides" / "case-1.json").read_text())
    assert "embed:tiny_vit" not in rec["timings"]


def test_bad_inputs_are_one_line_errors(tmp_path, few_slides):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="holds no slide files"):
        run(tmp_path / "empty", tmp_path / "o")
    pd.DataFrame({"file": ["x.tif"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ArchiveError, match="no 'path' column"):
        run(tmp_path / "bad.csv", tmp_path / "o")
    with pytest.raises(ArchiveError, match="no file matches"):
        run(str(tmp_path / "nothing*.svs"), tmp_path / "o")
    other = tmp_path / "other"
    other.mkdir()
    (other / "s001.tif").write_bytes((few_slides / "s001.tif").read_bytes())
    with pytest.raises(ArchiveError, match="share the slide id 's001'"):
        run([few_slides, other], tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown key"):
        mm.archive.run(few_slides, tmp_path / "o", config={"tiling": {"sizes": 3}})
    with pytest.raises(ConfigError, match="not one of"):
        run(few_slides, tmp_path / "o", engine="spark")
    with pytest.raises(EngineError, match="takes no address"):
        run(few_slides, tmp_path / "o", address="127.0.0.1:1")


def test_corrupt_slide_fails_alone_and_stays_failed(tmp_path, few_slides, archive_slides):
    (few_slides / f"{CORRUPT}.tif").write_bytes((archive_slides / f"{CORRUPT}.tif").read_bytes())
    out = tmp_path / "arc"
    table = run(few_slides, out).set_index("slide_id")
    assert table.loc[CORRUPT, "state"] == "failed"
    err = table.loc[CORRUPT, "error"]
    assert err and "\n" not in err and len(err) < 500
    assert (table.drop(CORRUPT).state == "done").all()
    assert not (out / "tables" / f"{CORRUPT}.h5ad").exists()
    assert CORRUPT not in mm.archive.open(out).slide_ids
    again = run(few_slides, out).set_index("slide_id")
    assert again.loc[CORRUPT, "action"] == "kept failed"
    retried = run(few_slides, out, retry_failed=True).set_index("slide_id")
    assert retried.loc[CORRUPT, "action"] == "ran" and retried.loc[CORRUPT, "state"] == "failed"
    assert (retried.drop(CORRUPT).action == "skipped").all()


def test_replaced_slide_file_is_redone(few_slides, tmp_path):
    out = tmp_path / "arc"
    run(few_slides, out)
    before = table_bytes(out, "s002")
    time.sleep(0.01)
    make_slide(few_slides / "s002.tif", seed=99)  # another slide under the same name
    table = run(few_slides, out).set_index("slide_id")
    assert table.loc["s002", "action"] == "ran"
    assert (table.drop("s002").action == "skipped").all()
    assert table_bytes(out, "s002") != before


def test_changed_tiling_is_refused_unless_overwrite(few_slides, tmp_path):
    out = tmp_path / "arc"
    run(few_slides, out)
    with pytest.raises(ArchiveError, match=r"size=64 .*this run: 96.*--overwrite"):
        run(few_slides, out, size=96)
    table = run(few_slides, out, size=96, overwrite=True)
    assert (table.action == "ran").all()
    assert (
        mm.io.read_h5ad(out / "tables" / "s001.h5ad").uns["mmpath"]["slides"]["s001"]["tiling"][
            "size"
        ]
        == 96
    )


def test_adding_an_encoder_embeds_only_that_encoder(few_slides, tmp_path):
    out = tmp_path / "arc"
    run(few_slides, out)
    before = {s: table_bytes(out, s) for s in ("s001", "s002", "s003")}
    cfg = {**CONFIG, "encoders": ["tiny_vit", "tiny_clip"]}
    table = mm.archive.run(few_slides, out, config=cfg, workers=0)
    assert (table.action == "ran").all() and (table.state == "done").all()
    for sid in before:
        tiles = mm.io.read_h5ad(out / "tables" / f"{sid}.h5ad")
        assert {"X_tiny_vit", "X_tiny_clip", "X_tiny_clip_proj"} <= set(tiles.obsm)
        assert table_bytes(out, sid) == before[sid]  # the old embedding was kept, not redone
        rec = json.loads((out / "slides" / f"{sid}.json").read_text())
        assert "embed:tiny_clip" in rec["timings"] and "embed:tiny_vit" not in rec["timings"]
        assert "tile" not in rec["timings"]  # tiles were reused
    assert (mm.archive.run(few_slides, out, config=cfg, workers=0).action == "skipped").all()


def test_zero_shot_classes(few_slides, tmp_path):
    cfg = {
        **CONFIG,
        "encoders": ["tiny_clip"],
        "zero_shot": {"classes": ["tumor", "stroma"], "key_added": "zs"},
    }
    out = tmp_path / "arc"
    mm.archive.run(few_slides, out, config=cfg, workers=0)
    tiles = mm.io.read_h5ad(out / "tables" / "s001.h5ad")
    p = tiles.obs[["zs_tumor", "zs_stroma"]].to_numpy()
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    rec = json.loads((out / "slides" / "s001.json").read_text())
    assert rec["zero_shot"]["label"] in ("tumor", "stroma")
    assert set(rec["zero_shot"]["probabilities"]) == {"tumor", "stroma"}


def test_live_lock_is_respected_and_stale_lock_taken_over(few_slides, tmp_path):
    out = tmp_path / "arc"
    locks = out / "locks"
    locks.mkdir(parents=True)
    from mmpath.archive.store import HOST

    # s001: another live runner (this very process, fresh mtime) holds it
    (locks / "s001.lock").write_text(json.dumps({"host": HOST, "pid": os.getpid(), "token": "x"}))
    # s002: the owner is a dead process on this host
    (locks / "s002.lock").write_text(json.dumps({"host": HOST, "pid": 2**22 + 7, "token": "y"}))
    # s003: an owner elsewhere that stopped refreshing the lock long ago
    (locks / "s003.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "z"}))
    old = time.time() - 10_000
    os.utime(locks / "s003.lock", (old, old))
    table = run(few_slides, out).set_index("slide_id")
    assert table.loc["s001", "state"] == "locked" and "another runner" in table.loc["s001", "error"]
    assert not (out / "tables" / "s001.h5ad").exists()
    assert table.loc["s002", "state"] == "done" and table.loc["s003", "state"] == "done"
    assert (locks / "s001.lock").exists() and not (locks / "s002.lock").exists()
    (locks / "s001.lock").unlink()
    again = run(few_slides, out).set_index("slide_id")
    assert list(again.action) == ["ran", "skipped", "skipped"]


def test_half_written_outputs_are_never_taken_as_done(few_slides, tmp_path):
    out = tmp_path / "arc"
    run(few_slides, out)
    # a table damaged after the record (or a record whose table is not whole)
    path = out / "tables" / "s001.h5ad"
    path.write_bytes(path.read_bytes()[:1000])
    # a table without its record (the job died between the rename and the record)
    (out / "slides" / "s002.json").unlink()
    st = mm.archive.status(out).set_index("slide_id")
    assert st.loc["s001", "state"] == "pending"
    table = run(few_slides, out).set_index("slide_id")
    assert table.loc["s001", "action"] == "ran" and table.loc["s002", "action"] == "ran"
    assert table.loc["s003", "action"] == "skipped"
    assert mm.io.read_h5ad(path).n_obs == table.loc["s001", "n_tiles"]


def test_disk_full_fails_the_slide_without_a_complete_looking_file(
    few_slides, tmp_path, monkeypatch
):
    import anndata as ad

    real = ad.AnnData.write_h5ad

    def full(self, filename, *a, **k):
        if "s002" in str(filename):
            with open(filename, "wb") as f:
                f.write(b"\x89HDF\r\n" + b"\0" * 100)  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, filename, *a, **k)

    monkeypatch.setattr(ad.AnnData, "write_h5ad", full)
    out = tmp_path / "arc"
    table = run(few_slides, out).set_index("slide_id")
    assert table.loc["s002", "state"] == "failed"
    assert (
        "No space left" in table.loc["s002", "error"]
        and "retry-failed" in table.loc["s002", "error"]
    )
    assert sorted(p.name for p in (out / "tables").iterdir()) == ["s001.h5ad", "s003.h5ad"]
    monkeypatch.setattr(ad.AnnData, "write_h5ad", real)
    again = run(few_slides, out, retry_failed=True).set_index("slide_id")
    assert again.loc["s002", "state"] == "done" and again.loc["s002", "action"] == "ran"


def test_staging_copies_ahead_within_bound_and_cleans_up(few_slides, tmp_path):
    from mmpath.archive.staging import Stager

    stage = tmp_path / "stage"
    size = max(p.stat().st_size for p in few_slides.iterdir())
    cfg = {**CONFIG, "staging": {"max_gb": 2.5 * size / 1e9, "ahead": 2}}
    out = tmp_path / "arc"
    table = mm.archive.run(few_slides, out, config=cfg, workers=0, stage_dir=stage)
    assert (table.state == "done").all()
    assert list(stage.iterdir()) == []  # every copy was removed as its slide finished
    tiles = mm.io.read_h5ad(out / "tables" / "s002.h5ad")
    assert tiles.uns["mmpath"]["slides"]["s002"]["path"] == str(few_slides / "s002.tif")
    ref = tmp_path / "ref"
    mm.archive.run(few_slides, ref, config=CONFIG, workers=0)
    for sid in ("s001", "s002", "s003"):
        assert table_bytes(out, sid) == table_bytes(ref, sid)

    # the bound: with room for two slides, a third waits until one is released
    stager = Stager(tmp_path / "stage2", max_gb=2.5 * size / 1e9, ahead=3)
    payloads = [
        {"task": {"slide_id": p.stem, "path": str(p)}, "staged": None}
        for p in sorted(few_slides.iterdir())
    ]
    it = stager.stage(iter(payloads))
    first, second = next(it), next(it)
    assert second["staged"]
    assert Path(first["staged"]).read_bytes() == (few_slides / "s001.tif").read_bytes()
    time.sleep(0.3)
    assert stager.used <= stager.max_bytes and len(list((tmp_path / "stage2").iterdir())) == 2
    stager.release(first["task"]["slide_id"])
    third = next(it)
    assert third["staged"] and stager.peak <= stager.max_bytes
    stager.close()
    assert list((tmp_path / "stage2").iterdir()) == []


def test_input_signature_is_computed_once_per_slide(few_slides, tmp_path, monkeypatch):
    """The driver hashes each slide once and the job records that signature (of the
    original file, also when it reads a staged copy)."""
    from mmpath.archive import store as S

    calls = []
    real = S.input_signature

    def counting(path, *, with_hash=False):
        calls.append((Path(path).name, with_hash))
        return real(path, with_hash=with_hash)

    monkeypatch.setattr(S, "input_signature", counting)
    out = tmp_path / "arc"
    cfg = {**CONFIG, "hash_inputs": True}
    table = mm.archive.run(few_slides, out, config=cfg, workers=0, stage_dir=tmp_path / "stage")
    assert (table.state == "done").all()
    assert sorted(calls) == [(f"s00{i}.tif", True) for i in (1, 2, 3)]
    for sid in ("s001", "s002", "s003"):
        rec = json.loads((out / "slides" / f"{sid}.json").read_text())
        assert rec["input"] == real(str(few_slides / f"{sid}.tif"), with_hash=True)
        assert len(rec["input"]["sha256"]) == 64
