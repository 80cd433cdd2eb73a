"""Recoverable atomic outputs (issue 10 item 5): a kill between the two renames of a
directory swap, fsync before the renames, and cleanup of leftovers from dead writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from mmpath import _keys as K
from mmpath.io import _atomic
from mmpath.io._atomic import atomic_path, atomic_write_text, recover


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not _atomic.pid_alive(p.pid)
    return p.pid


def _write_dir(path: Path, text: str) -> None:
    path.mkdir(parents=True)
    (path / "a.txt").write_text(text)
    (path / "sub").mkdir()
    (path / "sub" / "b.txt").write_text(text * 2)


def _crashed_swap(target: Path, old: str, new: str, pid: int) -> None:
    """The disk state after a kill between the renames: no target, ``.old`` and ``.tmp``."""
    _write_dir(target.with_name(f".{target.name}.old-{pid}"), old)
    _write_dir(target.with_name(f".{target.name}.tmp-{pid}"), new)


def test_recover_promotes_the_complete_new_version(tmp_path, dead_pid):
    target = tmp_path / "out.idx"
    _crashed_swap(target, "v1", "v2", dead_pid)
    assert recover(target).name == f".out.idx.tmp-{dead_pid}"
    assert (target / "a.txt").read_text() == "v2" and (target / "sub/b.txt").read_text() == "v2v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.idx"]  # .old removed


def test_recover_restores_old_when_no_new_version(tmp_path, dead_pid):
    target = tmp_path / "out.idx"
    _write_dir(target.with_name(f".out.idx.old-{dead_pid}"), "v1")
    recover(target)
    assert (target / "a.txt").read_text() == "v1"


def test_an_error_between_the_renames_restores_the_old_target(tmp_path, monkeypatch):
    target = tmp_path / "m"
    _write_dir(target, "v1")

    def boom():
        raise OSError("disk gone")

    monkeypatch.setattr(_atomic, "_swap_hook", boom)
    with pytest.raises(OSError, match="disk gone"), atomic_path(target) as tmp:
        _write_dir(tmp, "v2")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_dead_writers_leftovers_are_removed_by_the_next_write(tmp_path, dead_pid):
    live = os.getppid()  # a running process: its temporaries are never touched
    target = tmp_path / "t.h5ad"
    stale_file = tmp_path / f".t.h5ad.tmp-{dead_pid}"
    stale_file.write_bytes(b"x" * 1000)
    stale_dir = tmp_path / f".t.h5ad.old-{dead_pid}"
    _write_dir(stale_dir, "old")
    running = tmp_path / f".t.h5ad.tmp-{live}"
    running.write_text("being written")
    other = tmp_path / f".other.h5ad.tmp-{dead_pid}"  # another output's leftover
    other.write_text("x")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert not stale_file.exists() and not stale_dir.exists()
    assert running.exists() and other.exists()


def test_fsync_before_the_renames(tmp_path, monkeypatch):
    target = tmp_path / "d"
    _write_dir(target, "v1")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync:" + os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 2)[-1])
        real_fsync(fd)

    def replace(a, b):
        events.append(f"replace:{Path(a).name}")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_path(target) as tmp:
        _write_dir(tmp, "v2")
    first = events.index("replace:d")
    before = events[:first]
    assert "fsync:a.txt" in before and "fsync:b.txt" in before  # the new files
    assert any(e == f"fsync:{tmp_path.name}" for e in before)  # the parent directory
    assert events[first + 1] == f"replace:.d.tmp-{os.getpid()}"
    assert events[-1] == f"fsync:{tmp_path.name}" or f"fsync:{tmp_path.name}" in events[first:]


def _table(n: int = 40, dim: int = 8) -> ad.AnnData:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            K.SLIDE_ID: pd.Categorical(["s0"] * n),
            K.X: np.arange(n) * 64,
            K.Y: np.zeros(n, int),
            K.TISSUE_FRAC: 1.0,
        },
        index=[K.obs_name("s0", i) for i in range(n)],
    )
    t = ad.AnnData(obs=obs)
    t.obsm["X_toy"] = rng.standard_normal((n, dim)).astype(np.float32)
    t.uns[K.UNS] = {K.UNS_SLIDES: {"s0": {"path": None, "mpp": 0.5}}}
    return t


_KILL_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import mmpath as mm
    from mmpath.io import _atomic
    t = mm.io.read_h5ad(sys.argv[1])
    t.obsm["X_toy"] = t.obsm["X_toy"][::-1].copy()  # other vectors: a new version
    idx = mm.index.build(t, use_rep="X_toy", factory="Flat")
    _atomic._swap_hook = lambda: os.kill(os.getpid(), signal.SIGKILL)
    idx.save(sys.argv[2])
    """
)


def test_index_save_killed_between_the_renames_is_recovered_on_load(tmp_path):
    """A real SIGKILL between ``target -> .old`` and ``.tmp -> target``; today the index is
    reported missing ("no index at ...") and survives only as ``.sw.idx.old-PID``."""
    import mmpath as mm

    table = tmp_path / "t.h5ad"
    t = _table()
    mm.io.write_h5ad(t, table)
    path = tmp_path / "sw.idx"
    mm.index.build(t, use_rep="X_toy", factory="Flat").save(path)
    env = {**os.environ, "PYTHONPATH": str(Path(mm.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SAVE, str(table), str(path)], env=env, capture_output=True
    )
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    assert not path.exists()  # killed between the renames
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} >= {".sw.idx.old", ".sw.idx.tmp"}
    idx = mm.index.load(path)  # recovered: the new version, which was complete
    # the new version holds the reversed vectors: row i of it is row n-1-i of the old
    rev = t.obsm["X_toy"][::-1]
    _, ids = idx.search_vectors(rev[:5], k=1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sw.idx", "t.h5ad"]


def test_model_and_weights_folders_are_recovered_on_open(tmp_path, monkeypatch, dead_pid):
    from mmpath.models import local_dir
    from mmpath.models.weights import resolve_weights

    folder = tmp_path / "model"
    _crashed_swap(folder, "v1", "v2", dead_pid)
    with pytest.raises(Exception, match="not an mmpath model folder"):
        local_dir.read_config(folder)  # recovered (v2 has no config.yaml: a plain folder)
    assert (folder / "a.txt").read_text() == "v2"

    monkeypatch.setenv("MMPATH_HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / "weights" / "uni"
    home.parent.mkdir(parents=True)
    _crashed_swap(home, "w1", "w2", dead_pid)
    assert resolve_weights("uni") == home and (home / "a.txt").read_text() == "w2"


def test_missing_target_with_a_live_writer_is_named_in_the_error(tmp_path):
    import mmpath as mm
    from mmpath.errors import IndexError_

    live = os.getppid()
    _write_dir(tmp_path / f".x.idx.old-{live}", "v1")
    with pytest.raises(IndexError_, match=r"interrupted write left \.x\.idx\.old-"):
        mm.index.load(tmp_path / "x.idx")
    assert (tmp_path / f".x.idx.old-{live}").exists()  # a running writer's files are kept


def test_next_tile_run_removes_dead_leftovers_of_its_outputs(tmp_path, dead_pid):
    """A rerun that skips the (complete) table still clears a crashed run's temporaries."""
    from PIL import Image

    from mmpath.cli import main

    arr = np.full((200, 300, 3), 235, np.uint8)
    arr[40:160, 60:240] = (150, 80, 160)
    Image.fromarray(arr).save(tmp_path / "s.png")
    out = tmp_path / "out"
    argv = ["-q", "tile", str(tmp_path / "s.png"), "-o", str(out), "--slide-mpp", "0.5"]
    argv += ["--size", "64", "--min-tissue", "0", "--no-thumbnail"]
    assert main(argv) == 0
    stale = out / f".s.h5ad.tmp-{dead_pid}"
    stale.write_bytes(b"\0" * 4096)  # a table half-written by a killed run
    assert main(argv) == 0  # same settings: skipped
    assert not stale.exists()
