"""The CLI in-process: exit codes, one-line errors, batch behaviour."""

from __future__ import annotations

import json

import pytest

from mmpath import io
from mmpath.cli import main


def test_info_text_and_json(synthetic_slide_path, capsys):
    assert main(["info", str(synthetic_slide_path)]) == 0
    out = capsys.readouterr().out
    assert "generic-tiff" in out and "level 2" in out and "0.5 µm/px" in out
    assert main(["info", "--json", str(synthetic_slide_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dims"] == [2048, 1536] and info["level_count"] == 3


def test_bad_path_is_one_line_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.svs")]) == 2
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in lines[0]


def test_tile_batch_continues_past_a_bad_slide(tmp_path, synthetic_slide_path, capsys):
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(b"II*\x00garbage" * 100)
    out_dir = tmp_path / "tiles"
    rc = main(
        [
            "-q",
            "tile",
            str(bad),
            str(synthetic_slide_path),
            "-o",
            str(out_dir),
            "--mpp",
            "1.0",
            "--size",
            "128",
        ]
    )
    assert rc == 2
    text = capsys.readouterr().out
    assert "corrupt.svs" in text and "tiled 1/2 slide(s)" in text and "1 failed" in text
    table = io.read_h5ad(out_dir / f"{synthetic_slide_path.stem}.h5ad")
    assert table.n_obs > 0
    assert (out_dir / f"{synthetic_slide_path.stem}.png").exists()
    # a re-run skips the finished slide (resume) and still reports the bad one
    rc = main(
        [
            "-q",
            "tile",
            str(bad),
            str(synthetic_slide_path),
            "-o",
            str(out_dir),
            "--mpp",
            "1.0",
            "--size",
            "128",
        ]
    )
    assert rc == 2


def test_tile_reports_bad_request(synthetic_slide_path, tmp_path, capsys):
    rc = main(["tile", str(synthetic_slide_path), "-o", str(tmp_path), "--size", "99999"])
    assert rc == 2
    assert "larger than" in capsys.readouterr().out


def test_debug_reraises(tmp_path):
    from mmpath.errors import SlideError

    with pytest.raises(SlideError, match="does not exist"):
        main(["--debug", "tile", str(tmp_path / "x.svs"), "-o", str(tmp_path)])


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
