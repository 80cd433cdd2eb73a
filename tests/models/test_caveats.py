"""Demo and random-weight models carry a one-line caveat into provenance and the CLI; class
names far from the demo LiT model's training phrases get a warning (issue 11 item 3)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.cli import _common, main
from mmpath.models.caveats import caveat, vocabulary


@pytest.fixture(autouse=True)
def _fresh_caveats():
    _common._CAVEATS_SHOWN.clear()
    yield
    _common._CAVEATS_SHOWN.clear()


def test_caveat_says_demo_random_or_nothing(tmp_path):
    assert "random weights" in caveat(mm.models.create_encoder("tiny_clip"))
    lit = mm.models.create_encoder("demo-lit")
    assert "demo model" in caveat(lit) and "not diagnostic" in caveat(lit)
    # a real entry built without its weights is random too
    assert "random weights" in caveat(mm.models.create_encoder("phikon", pretrained=False))
    # weights that were loaded: no caveat
    enc = mm.models.create_encoder("tiny_vit")
    mm.models.save_encoder(enc, tmp_path / "mine")
    assert caveat(mm.models.create_encoder(f"local-dir:{tmp_path / 'mine'}")) == ""
    assert "dense nuclei" in vocabulary(lit) and vocabulary(enc) == ()


def _table(n: int = 12, dim: int = 128, seed: int = 0):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {K.SLIDE_ID: pd.Categorical(["s"] * n), K.X: np.arange(n) * 112, K.Y: 0},
        index=[f"s:{i}" for i in range(n)],
    )
    t = ad.AnnData(obs=obs)
    t.obsm["X_demo_lit_proj"] = rng.standard_normal((n, dim)).astype(np.float32)
    t.uns[K.UNS] = {K.UNS_SLIDES: {"s": {"path": None, "mpp": 0.5}}}
    return t


def test_far_class_names_warned_and_recorded(caplog):
    t = _table()
    lit = mm.models.create_encoder("demo-lit")
    classes = ["dense nuclei", "background glass", "necrosis", "lymphocytes"]
    with caplog.at_level(logging.WARNING, logger="mmpath.tl"):
        mm.tl.zero_shot(t, classes, lit)
    run = t.uns[K.UNS][K.UNS_RUNS]["zs"]
    far = run["far_classes"]
    assert set(far) == {"necrosis", "lymphocytes"}
    thr = far["necrosis"]["threshold"]
    assert 0.5 < thr < 1.0 and far["necrosis"]["cosine"] < thr
    assert "demo model" in run["caveat"]
    assert any("far from anything it was trained on" in r.message for r in caplog.records)
    # the training classes themselves are never far
    assert mm.tl.zeroshot.far_classes(lit, ["dense nuclei", "eosin-rich stroma"]) == []
    # an encoder with no declared vocabulary: no check
    assert mm.tl.zeroshot.far_classes(mm.models.create_encoder("tiny_clip"), ["necrosis"]) == []


def test_cli_outputs_carry_the_caveat(synthetic_slide, tmp_path, capsys):
    tiles = mm.pp.tile(synthetic_slide, 64, mpp=4.0, min_tissue=0.5)
    tiles.obs["label"] = np.where(np.arange(tiles.n_obs) % 2 == 0, "a", "b")
    path = mm.io.write_h5ad(tiles, tmp_path / "a.h5ad")
    assert main(["-q", "embed", str(path), "--encoder", "tiny_clip", "--num-workers", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("mmpath: caveat: tiny_clip has random weights") == 1
    t = mm.io.read_h5ad(path)
    assert "random weights" in t.uns[K.UNS][K.UNS_EMBEDDINGS]["X_tiny_clip"]["caveat"]
    _common._CAVEATS_SHOWN.clear()
    rc = main(
        [
            "-q",
            "probe",
            str(path),
            "--use-rep",
            "X_tiny_clip",
            "--label",
            "label",
            "--groups",
            "none",
            "--folds",
            "2",
            "-o",
            str(tmp_path / "probe"),
        ]
    )
    assert rc == 0
    assert "mmpath: caveat: tiny_clip has random weights" in capsys.readouterr().err
    report = json.loads((tmp_path / "probe" / "report.json").read_text())
    assert "random weights" in report["caveat"]
    _common._CAVEATS_SHOWN.clear()
    rc = main(
        [
            "-q",
            "zeroshot",
            str(path),
            "--encoder",
            "demo-lit",
            "--classes",
            "dense nuclei;necrosis",
            "-o",
            str(tmp_path / "zs"),
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "mmpath: caveat: mmpath-demo-lit is a demo model" in err
    assert "'necrosis' far from anything it was trained on" in err
    run = mm.io.read_h5ad(tmp_path / "zs" / "a.h5ad").uns[K.UNS][K.UNS_RUNS]["zs"]
    assert "demo model" in run["caveat"] and list(run["far_classes"]) == ["necrosis"]
