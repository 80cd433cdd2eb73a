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
