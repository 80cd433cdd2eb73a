"""A run's warnings are deduplicated and summarised; -q keeps one of each kind (issue 11)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
from PIL import Image

from mmpath.cli import _common, main


def test_tile_many_blank_images_says_it_once(tmp_path, capsys):
    paths = []
    for i in range(6):
        p = tmp_path / f"blank{i}.png"
        Image.fromarray(np.full((96, 96, 3), (246, 240, 243), np.uint8)).save(p)  # glass
        paths.append(str(p))
    for quiet in ([], ["-q"]):
        rc = main(
            [
                *quiet,
                "tile",
                *paths,
                "--slide-mpp",
                "0.5",
                "--size",
                "32",
                "-o",
                str(tmp_path / "out"),
                "--overwrite",
                "--no-thumbnail",
            ]
        )
        assert rc == 0
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "warning" in ln.lower()]
        assert len(lines) == 1, err
        assert "6 slide(s) had no tissue tiles" in lines[0] and "blank0.png" in lines[0]
        assert "no tissue detected" not in err


def test_dedup_shows_each_kind_a_few_times_then_summarises(capsys):
    dedup = _common.WarningDedup(show=2)
    handler = logging.StreamHandler()
    handler.addFilter(dedup)
    log = logging.getLogger("mmpath.test_noise")
    log.addHandler(handler)
    log.propagate = False
    try:
        for i in range(7):
            log.warning("slide 's%d': a %d px tile is upsampled", i, 32 + i)
        log.warning("something else")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = dedup.showwarning
            for i in range(4):
                warnings.warn(f"table {i} is empty", UserWarning, stacklevel=1)
        dedup.summarise()
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("is upsampled") == 2 + 1  # two shown, then the summary line
    assert "7 warnings like \"slide 's0': a 32 px tile is upsampled\"" in err
    assert "5 not shown" in err and "something else" in err
    assert err.count("mmpath: warning: table") == 2
    assert "4 warnings like 'table 0 is empty'" in err
