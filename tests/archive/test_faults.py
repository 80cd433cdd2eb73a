"""Kills: a worker process killed mid-slide, a whole run killed mid-way; and the CLI.

After either kill, a rerun redoes exactly the unfinished slides, and the archive equals an
uninterrupted run's bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import mmpath as mm
from mmpath.cli import main

from .archive_helpers import CONFIG, CORRUPT, assert_same_tables

IDS = [f"s{i:03d}" for i in range(1, 9)]


def _copy(archive_slides: Path, dest: Path, ids) -> Path:
    dest.mkdir(parents=True)
    for sid in ids:
        shutil.copy2(next(archive_slides.rglob(f"{sid}.tif")), dest / f"{sid}.tif")
    return dest


def _reference(slides: Path, tmp: Path) -> Path:
    ref = tmp / "reference"
    table = mm.archive.run(slides, ref, config=CONFIG, workers=0)
    assert (table.state == "done").all()
    return ref


def _states(out: Path) -> dict[str, str]:
    states = {}
    for p in (out / "slides").glob("*.json"):
        try:
            states[p.stem] = json.loads(p.read_text())["state"]
        except (OSError, ValueError, KeyError):
            continue
    return states


@pytest.mark.slow  # two process pools (each worker imports torch): ~50 s on 2 busy cores
def test_worker_killed_mid_slide_is_redone_exactly(archive_slides, tmp_path):
    slides = _copy(archive_slides, tmp_path / "slides", IDS[:6])
    out = tmp_path / "arc"
    result = {}
    runner = threading.Thread(
        target=lambda: result.update(t=mm.archive.run(slides, out, config=CONFIG, workers=2))
    )
    runner.start()
    victim = None
    while victim is None and runner.is_alive():
        for lock in (out / "locks").glob("*.lock") if (out / "locks").is_dir() else []:
            try:
                info = json.loads(lock.read_text())
            except (OSError, ValueError):
                continue
            if info.get("pid") not in (None, os.getpid()):
                os.kill(info["pid"], signal.SIGKILL)
                victim = lock.stem
                break
        time.sleep(0.002)
    runner.join(timeout=900)
    assert victim is not None, "no worker was seen holding a slide"
    table = result["t"].set_index("slide_id")
    assert table.loc[victim, "state"] == "interrupted"
    assert "worker process died" in table.loc[victim, "error"]
    assert (table.drop(victim).state == "done").all()  # the others went on (a fresh pool)
    assert mm.archive.status(out).set_index("slide_id").loc[victim, "state"] == "interrupted"

    again = mm.archive.run(slides, out, config=CONFIG, workers=0)
    assert set(again.slide_id[again.action == "ran"]) == {victim}
    assert (again.state == "done").all()
    assert_same_tables(_reference(slides, tmp_path), out, IDS[:6])


@pytest.mark.slow  # a cold CLI subprocess (imports torch) plus two in-process runs
def test_whole_run_killed_midway_resumes_exactly(archive_slides, tmp_path):
    slides = _copy(archive_slides, tmp_path / "slides", IDS)
    out = tmp_path / "arc"
    cfg = tmp_path / "archive.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "mmpath", "-q", "archive", "run", str(slides), "-o", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--config", str(cfg), "--workers", "0"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if list(_states(out).values()).count("done") >= 3:
                break
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {s for s, st in _states(out).items() if st == "done"}
    assert 3 <= len(done_before) < len(IDS), done_before
    st = mm.archive.status(out)
    assert "running" not in set(st.state)  # a dead owner's slide shows as interrupted/pending

    again = mm.archive.run(slides, out, config=CONFIG, workers=0)
    assert set(again.slide_id[again.action == "ran"]) == set(IDS) - done_before
    assert (again.state == "done").all()
    assert_same_tables(_reference(slides, tmp_path), out, IDS)


def test_cli_run_and_status(archive_slides, tmp_path, capsys):
    slides = _copy(archive_slides, tmp_path / "slides", IDS[:2])
    shutil.copy2(archive_slides / f"{CORRUPT}.tif", slides)
    cfg = tmp_path / "archive.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "thumbnails": True}))
    out = tmp_path / "arc"
    args = ["-q", "archive", "run", str(slides), "-o", str(out), "--config", str(cfg)]
    assert main([*args, "--workers", "0"]) == 2
    text = capsys.readouterr()
    assert f"mmpath: error: {CORRUPT}: failed:" in text.err
    assert "3 slide(s) in this run: 2 done, 1 failed" in text.out
    assert "1 slide(s) not done" in text.out

    assert main(["archive", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "s001" in text and CORRUPT in text and "failed" in text
    summary = (out / "summary.md").read_text()
    assert "## Failures (1)" in summary and CORRUPT in summary and "mmpath" in summary
    assert "3 slide(s): 2 done, 1 failed" in summary
    _check_pictures(out, summary)

    # another tile size into the same folder: one line naming the flag, exit 2
    assert main([*args, "--workers", "0", "--size", "96"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert main(["archive", "status", str(tmp_path)]) == 2
    assert "not an archive folder" in capsys.readouterr().err


def _check_pictures(out: Path, summary: str) -> None:
    """A thumbnail with the tile grid per done slide; the contact sheet shows both."""
    import numpy as np
    from PIL import Image

    from mmpath.archive.pictures import SHEET_CELL

    assert sorted(p.stem for p in (out / "thumbs").glob("*.jpg")) == IDS[:2]  # none if failed
    pics = []
    for sid in IDS[:2]:
        rec = json.loads((out / "slides" / f"{sid}.json").read_text())
        assert rec["thumbnail"] == f"thumbs/{sid}.jpg" and rec["timings"]["thumbnail"] > 0
        im = np.asarray(Image.open(out / rec["thumbnail"]).convert("RGB")).astype(int)
        # the tiles are painted in viridis (green/blue, not grey): a grid is drawn
        coloured = (np.abs(im[..., 1] - im[..., 0]) > 40).mean()
        assert im.shape[0] > 200 and coloured > 0.02, coloured
        pics.append(im)
    assert pics[0].shape != pics[1].shape or (pics[0] != pics[1]).any()
    sheet = Image.open(out / "contact_sheet.jpg")
    assert sheet.size[0] == 2 * SHEET_CELL  # two done slides, side by side
    cells = np.asarray(sheet.convert("L"))
    assert (cells[:, :SHEET_CELL] < 250).mean() > 0.1 and (cells[:, SHEET_CELL:] < 250).mean() > 0.1
    assert "![contact sheet](contact_sheet.jpg)" in summary and "all 2 done slides" in summary
