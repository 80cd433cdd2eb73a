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
    cap = capsys.readouterr()
    assert "corrupt.svs" in cap.err  # per-slide errors on stderr, the summary on stdout
    assert "tiled 1/2 slide(s)" in cap.out and "1 failed" in cap.out
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
    assert "larger than" in capsys.readouterr().err


def test_debug_reraises(tmp_path):
    from mmpath.errors import SlideError

    with pytest.raises(SlideError, match="does not exist"):
        main(["--debug", "tile", str(tmp_path / "x.svs"), "-o", str(tmp_path)])


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def _png_slide(path, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.full((300, 400, 3), 240, np.uint8)
    arr[50:250, 80:320] = rng.integers(100, 200, (200, 240, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_tile_next_to_a_png_never_overwrites_it(tmp_path):
    src = _png_slide(tmp_path / "scan.png")
    before = src.read_bytes()
    args = ["-q", "tile", str(src), "-o", str(tmp_path), "--slide-mpp", "0.5", "--size", "64"]
    assert main(args) == 0
    assert src.read_bytes() == before  # the input scan is intact
    assert (tmp_path / "scan.tiles.png").exists() and (tmp_path / "scan.h5ad").exists()


def test_tile_refuses_two_slides_with_one_stem(tmp_path, capsys):
    a, b = _png_slide(tmp_path / "a" / "s.png"), _png_slide(tmp_path / "b" / "s.png", seed=1)
    out = tmp_path / "out"
    base = ["-q", "tile", "-o", str(out), "--slide-mpp", "0.5", "--size", "64"]
    assert main([*base, str(a), str(b)]) == 2
    cap = capsys.readouterr()
    assert "tiled 1/2" in cap.out and "also the id of" in cap.err
    # a later run with the other file is not silently "resumed" from the first one's table
    assert main([*base, str(b)]) == 2
    assert "already holds slide 's'" in capsys.readouterr().err
    assert io.read_h5ad(out / "s.h5ad").uns["mmpath"]["slides"]["s"]["path"] == str(a)


def test_unexpected_exception_is_one_line(monkeypatch, capsys):
    from mmpath.cli import build_parser

    def boom(args):
        raise ValueError("first line\nsecond line of a library message")

    parser = build_parser()
    monkeypatch.setattr("mmpath.cli.build_parser", lambda: _Fixed(parser, boom))
    assert main(["info", "x.svs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "ValueError: first line second line" in err[0] and "--debug" in err[0]
    with pytest.raises(ValueError):
        main(["--debug", "info", "x.svs"])


class _Fixed:
    """A parser whose verb function raises (the exception comes from inside a verb)."""

    def __init__(self, parser, func):
        self.parser, self.func = parser, func

    def parse_args(self, argv):
        args = self.parser.parse_args(argv)
        args.func = self.func
        return args

    def print_help(self):
        self.parser.print_help()


def test_tile_rerun_skips_only_complete_outputs_with_the_same_settings(tmp_path, capsys):
    """Issue 10 item 6: a rerun skips a slide only when its table AND thumbnail exist and were
    made with the same settings; other settings are refused naming --overwrite."""
    src = _png_slide(tmp_path / "in" / "s.png")
    out = tmp_path / "out"
    base = ["-q", "tile", str(src), "-o", str(out), "--slide-mpp", "0.5", "--min-tissue", "0"]
    assert main([*base, "--size", "64"]) == 0
    table, png = out / "s.h5ad", out / "s.png"
    first = io.read_h5ad(table)
    assert first.uns["mmpath"]["slides"]["s"]["tiling"]["cli_request"]["size"] == 64
    # a kill between the table and the thumbnail: the rerun draws the missing thumbnail
    png.unlink()
    stamp = table.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*base, "--size", "64"]) == 0
    assert png.is_file() and table.stat().st_mtime_ns == stamp
    capsys.readouterr()
    # other settings over the 64-px table: refused with one line naming --overwrite
    assert main([*base, "--size", "128"]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "size 64 -> 128" in err[0]
    assert "tiled 0/1" in cap.out
    assert io.read_h5ad(table).n_obs == first.n_obs  # untouched
    # --overwrite redoes it with the new settings
    assert main([*base, "--size", "128", "--overwrite"]) == 0
    redone = io.read_h5ad(table)
    assert redone.uns["mmpath"]["slides"]["s"]["tiling"]["size"] == 128
    assert redone.n_obs < first.n_obs
    # and then the same settings skip
    stamp = table.stat().st_mtime_ns
    assert main([*base, "--size", "128"]) == 0
    assert table.stat().st_mtime_ns == stamp


def test_tile_rerun_refuses_a_table_without_recorded_settings(tmp_path, capsys):
    src = _png_slide(tmp_path / "in" / "s.png")
    out = tmp_path / "out"
    base = ["-q", "tile", str(src), "-o", str(out), "--slide-mpp", "0.5", "--size", "64"]
    assert main(base) == 0
    t = io.read_h5ad(out / "s.h5ad")
    del t.uns["mmpath"]["slides"]["s"]["tiling"]["cli_request"]
    io.write_h5ad(t, out / "s.h5ad")
    capsys.readouterr()
    assert main(base) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_tile_out_is_a_file(tmp_path, capsys):
    src = _png_slide(tmp_path / "s.png")
    f = tmp_path / "f.txt"
    f.write_text("keep")
    assert main(["-q", "tile", str(src), "-o", str(f), "--slide-mpp", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and "Traceback" not in err[0]
    assert f.read_text() == "keep"
