"""`mmpath demo` end to end, so CI catches a broken demo."""

from __future__ import annotations

import re

from mmpath.cli import main


def test_demo_end_to_end(tmp_path, capsys, testdata, monkeypatch):
    monkeypatch.setenv("MMPATH_TESTDATA", str(testdata))
    out = tmp_path / "demo out"
    assert main(["-q", "demo", "-o", str(out)]) == 0
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "not diagnostic" in report
    assert "class='failed'" not in report
    assert "Tissue detection and tiling" in report
    assert len(re.findall(r"<img ", report)) >= 1
    assert (out / "tiles.h5ad").exists()
    assert "demo report:" in capsys.readouterr().out
    # `make demo` twice in a row: the second run replaces the first's outputs
    assert main(["-q", "demo", "-o", str(out)]) == 0
    assert "class='failed'" not in (out / "report.html").read_text(encoding="utf-8")
