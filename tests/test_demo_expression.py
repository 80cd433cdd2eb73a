"""The demo's image-to-RNA section shows the mean r first and a colour scale that says what it
spans (issue 11 item 5)."""

from __future__ import annotations

import re

import matplotlib
import pytest

from mmpath.demo import step_expression
from mmpath.demo.report import DemoContext

matplotlib.use("Agg")


def test_expression_section_mean_r_first_and_scale_named(tmp_path, testdata, monkeypatch):
    monkeypatch.setenv("MMPATH_TESTDATA", str(testdata))
    if step_expression._fixture() is None:
        pytest.skip("the Visium fixture is not in $MMPATH_TESTDATA (make testdata)")
    (section,) = step_expression.run(DemoContext(out=tmp_path))
    body = section.body_html
    keys = re.findall(r"<td>([^<]*)</td>", body)
    assert keys[0].startswith("mean held-out Pearson r over the 20 genes")
    mean_r = float(keys[1])
    best = re.search(r"the best of 20 \(held-out r = (-?[0-9.]+)", body)
    assert best and float(best.group(1)) >= mean_r
    scale = re.search(r"measured range over the spots, (-?[0-9.]+) to (-?[0-9.]+)", body)
    assert scale and float(scale.group(2)) > float(scale.group(1))


def test_skipped_step_says_why_on_the_console(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("MMPATH_TESTDATA", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING, logger="mmpath.demo"):
        (section,) = step_expression.run(DemoContext(out=tmp_path))
    assert "Skipped" in section.body_html
    assert any("image-to-RNA step skipped" in r.message for r in caplog.records)


def test_makefile_torch_index_and_demo_fetch():
    import shutil
    import subprocess
    from pathlib import Path

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]

    def dry(*args):
        cmd = [make, "-n", "-B", "-C", str(root), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    default = [ln for ln in dry("venv").splitlines() if "torch==" in ln]
    assert default and "--index-url" not in default[0]  # today's default is unchanged
    cpu = dry("venv", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==" in cpu
    demo = dry("demo")
    assert demo.index("fetch_test_data") < demo.index("mmpath demo")
