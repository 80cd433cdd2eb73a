"""Bad cohorts for ``mmpath train mil`` / ``predict_slides``: one clear error before training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torchmil", reason="MIL heads need torchmil (pip install 'mmpath[mil]')")

from mmpath import _keys as K  # noqa: E402
from mmpath.config import load_config  # noqa: E402
from mmpath.datasets.synthetic_mil import SYNTH_REP, synthetic_mil_cohort  # noqa: E402
from mmpath.errors import DataError  # noqa: E402


@pytest.fixture()
def small():
    return synthetic_mil_cohort(8, tiles=(20, 30), paired_patients=0, seed=3)


def _run(tmp_path, tables, labels, *extra):
    from mmpath.train.tasks.mil import MILRunConfig
    from mmpath.train.tasks.mil_report import run_mil

    cfg = load_config(
        MILRunConfig,
        None,
        [f"out={tmp_path / 'run'}", f"data.use_rep={SYNTH_REP}", "train.quiet=true", *extra],
    )
    return run_mil(cfg, tables=tables, labels=labels)


def _never_trained(tmp_path):
    assert not list((tmp_path / "run").glob("fold*")), "training started despite bad input"


def test_slides_without_a_label(small, tmp_path):
    with pytest.raises(DataError, match=r"1 slide\(s\) in the tables have no label"):
        _run(tmp_path, small.tables, small.labels.iloc[1:])
    _never_trained(tmp_path)


def test_labels_for_slides_not_in_the_tables(small, tmp_path):
    labels = pd.concat([small.labels, small.labels.iloc[:1].assign(slide_id="GHOST")])
    with pytest.raises(DataError, match="not in the tile tables.*GHOST"):
        _run(tmp_path, small.tables, labels)
    _never_trained(tmp_path)


def test_one_class_only(small, tmp_path):
    with pytest.raises(DataError, match="at least two classes"):
        _run(tmp_path, small.tables, small.labels.assign(label="positive"))
    _never_trained(tmp_path)


def test_mixed_encoders(small, tmp_path):
    t = small.tables[2]
    t.uns[K.UNS][K.UNS_EMBEDDINGS][SYNTH_REP] = {"encoder": "uni"}
    with pytest.raises(DataError, match="different encoders"):
        _run(tmp_path, small.tables, small.labels)
    t.obsm[SYNTH_REP] = np.zeros((t.n_obs, 7), np.float32)
    with pytest.raises(DataError, match="7-d"):
        _run(tmp_path, small.tables, small.labels)
    _never_trained(tmp_path)


def test_a_bag_with_zero_tiles(small, tmp_path):
    small.tables[1] = small.tables[1][:0].copy()
    with pytest.raises(DataError, match="zero tiles"):
        _run(tmp_path, small.tables, small.labels)
    _never_trained(tmp_path)


def test_nan_embeddings(small, tmp_path):
    small.tables[4].obsm[SYNTH_REP][3, 0] = np.nan
    with pytest.raises(DataError, match="S004.*NaN"):
        _run(tmp_path, small.tables, small.labels)
    _never_trained(tmp_path)


def test_missing_embedding_and_survival_batch(small, tmp_path):
    from mmpath.errors import ConfigError

    with pytest.raises(DataError, match="no obsm\\['X_uni'\\]"):
        _run(tmp_path, small.tables, small.labels, "data.use_rep=X_uni")
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        _run(tmp_path, small.tables, small.labels, "data.task=survival", "cv.folds=0")


def test_cli_train_and_predict_slides_with_heatmaps(small, tmp_path, capsys):
    """The CLI end to end on .h5ad files; a table from another encoder is refused (exit 2)."""
    import anndata as ad

    from mmpath.cli import main
    from mmpath.datasets.synthetic_mil import write_mil_cohort

    paths, labels = write_mil_cohort(small, tmp_path / "cohort")
    cfg = tmp_path / "mil.yaml"
    cfg.write_text(
        f"out: {tmp_path / 'run'}\n"
        f"data:\n  tables: [{tmp_path / 'cohort/tables'}]\n  labels: {labels}\n"
        f"  use_rep: {SYNTH_REP}\n"
        "model:\n  hidden: 16\n  att_dim: 8\n"
        "cv:\n  folds: 2\n"
        "train:\n  epochs: 1\n"
    )
    assert main(["--quiet", "train", "mil", "--config", str(cfg)]) == 0
    assert (tmp_path / "run/report/metrics.json").is_file()
    out = tmp_path / "slides.h5ad"
    rc = main(
        [
            "--quiet",
            "predict-slides",
            *map(str, paths[:3]),
            "--model",
            str(tmp_path / "run"),
            "-o",
            str(out),
            "--heatmaps",
            str(tmp_path / "maps"),
        ]
    )
    assert rc == 0
    slides = ad.read_h5ad(out)
    assert slides.obs_names.tolist() == ["S000", "S001", "S002"]
    assert np.allclose(
        slides.obs[[K.class_key(K.MIL, c) for c in ("negative", "positive")]].sum(1), 1
    )
    tiles = ad.read_h5ad(paths[0])
    assert np.isclose(tiles.obs[K.MIL_ATTENTION].sum(), 1.0, atol=1e-4)
    assert len(list((tmp_path / "maps").glob("*.png"))) >= 3
    bad = ad.read_h5ad(paths[3])
    bad.obsm[SYNTH_REP] = np.zeros((bad.n_obs, 5), np.float32)
    bad.write_h5ad(tmp_path / "bad.h5ad")
    capsys.readouterr()
    rc = main(
        [
            "--quiet",
            "predict-slides",
            str(tmp_path / "bad.h5ad"),
            "--model",
            str(tmp_path / "run"),
            "-o",
            str(tmp_path / "s2.h5ad"),
        ]
    )
    assert rc == 2
    assert "5-d" in capsys.readouterr().err


def test_patient_level_labels_pool_slides_and_class_weights_balance(tmp_path):
    from mmpath.train.tasks._mil_data import prepare_mil_data
    from mmpath.train.tasks.mil import MILRunConfig, MILTask

    cohort = synthetic_mil_cohort(12, tiles=(20, 30), paired_patients=4, seed=5)
    cfg = load_config(
        MILRunConfig,
        None,
        [f"out={tmp_path / 'run'}", f"data.use_rep={SYNTH_REP}", "data.level=patient"],
    )
    data = prepare_mil_data(cfg, tables=cohort.tables, labels=cohort.labels)
    assert len(data) == 8  # 12 slides, 4 patients with two
    pairs = [s for s in data.slides if len(s) == 2]
    assert len(pairs) == 4
    i = data.slides.index(pairs[0])
    n = sum(t.n_obs for t in cohort.tables if t.obs[K.SLIDE_ID].iloc[0] in pairs[0])
    assert data.bag(i).shape == (n, 32)  # the patient's slides pooled into one bag
    task = MILTask(cfg, None, data)
    counts = np.bincount(data.y, minlength=2)
    expected = counts.sum() / (2 * counts)
    np.testing.assert_allclose(task.weights.numpy(), expected, rtol=1e-6)
    bad = cohort.labels.copy()
    bad.loc[bad[K.PATIENT_ID] == bad[K.PATIENT_ID].iloc[-1], "label"] = ["positive", "negative"]
    with pytest.raises(DataError, match="conflicting labels"):
        prepare_mil_data(cfg, tables=cohort.tables, labels=bad)
