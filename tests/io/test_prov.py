"""One provenance writer (_prov.record_run) and one per-class column rule (K.class_column)."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from mmpath import _keys as K
from mmpath.io import _prov


def test_record_run_sections_replace_and_read_back():
    a = ad.AnnData(np.zeros((2, 1), np.float32))
    assert _prov.record_run(a, "zero_shot", "zs", {"top_k": 5}) is None
    assert _prov.record_run(a, "zero_shot", "zs", {"top_k": 7}) == {"top_k": 5}
    _prov.record_run(a, "segment", "seg", {"classes": ["a"]})
    _prov.record_run(a, "anomaly", "anomaly_knn", {"k": 3})
    node = a.uns[K.UNS]
    # the layouts every table has used: runs, and the segment/anomaly/mil sections
    assert node[K.UNS_RUNS]["zs"] == {"top_k": 7}
    assert node[K.UNS_SEGMENT]["seg"] == {"classes": ["a"]}
    assert node[K.UNS_ANOMALY]["anomaly_knn"] == {"k": 3}
    assert _prov.run_record(a, "segment", "seg") == {"classes": ["a"]}
    assert _prov.run_record(a, "mil", "nope") is None
    t = ad.AnnData(np.zeros((1, 1), np.float32))
    _prov.new_root(t, {"s1": {"path": "x"}}, "mil", "mil", {"task": "classification"})
    assert t.uns[K.UNS][K.UNS_SLIDES] == {"s1": {"path": "x"}}
    assert t.uns[K.UNS][K.UNS_MIL]["mil"] == {"task": "classification"}


@pytest.mark.parametrize(
    ("args", "kw", "want"),
    [
        (("zs", "Tumor tissue"), {}, "zs_tumor_tissue"),  # zero-shot probabilities
        (("seg", "Stroma"), {"measure": "frac", "layout": "slug"}, "seg_stroma_frac"),
        (
            ("annotation", "Stroma"),
            {"measure": "frac", "layout": "label"},
            "annotation_frac_Stroma",
        ),
    ],
)
def test_one_column_rule_keeps_the_documented_names(args, kw, want):
    measure = kw.pop("measure", "")
    assert K.class_column(*args, measure, **kw) == want
    assert K.class_key("zs", "Tumor tissue") == K.class_column("zs", "Tumor tissue")


def test_no_step_writes_provenance_past_the_writer():
    root = Path(K.__file__).parent
    bad = []
    # step records (runs, segment, anomaly, mil) are written by _prov.record_run only
    pattern = re.compile(r"(setdefault\(|^\s*)K\.UNS_(RUNS|SEGMENT|ANOMALY|MIL)\b")
    for path in root.rglob("*.py"):
        if path.name == "_prov.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{path.relative_to(root)}:{i}")
    assert not bad, bad
