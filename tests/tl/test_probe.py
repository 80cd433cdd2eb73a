"""Probes and slide-grouped cross-validation on synthetic embeddings with known structure."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import mmpath as mm
from mmpath import _keys as K
from mmpath.errors import DataError
from mmpath.metrics import auroc_macro_ovr, cv_groups, group_kfold


@pytest.fixture(autouse=True)
def _one_thread():
    """sklearn's thread pools only add overhead on these tiny problems (and on shared CPUs)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _tiles(
    n_slides: int,
    per_slide: int,
    *,
    dim: int = 16,
    seed: int = 0,
    signal: float = 3.0,
    n_classes: int = 3,
    grid: int = 10,
):
    """Tiles on a ``grid`` x ``grid`` layout per slide; features = class centre + noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    rows, feats = [], []
    for s in range(n_slides):
        cells = rng.choice(grid * grid, per_slide, replace=False)
        for c in cells:
            y = rng.integers(n_classes)
            rows.append(
                {
                    K.SLIDE_ID: f"s{s}",
                    K.X: float(c % grid) * 224,
                    K.Y: float(c // grid) * 224,
                    "label": f"c{y}",
                }
            )
            feats.append(signal * centres[y] + rng.normal(0, 1, dim))
    obs = pd.DataFrame(rows)
    obs.index = [f"{r[K.SLIDE_ID]}:{i}" for i, r in obs.iterrows()]
    obs[K.SLIDE_ID] = obs[K.SLIDE_ID].astype("category")
    adata = ad.AnnData(obs=obs)
    adata.obsm["X_feat"] = np.asarray(feats, np.float32)
    return adata


def test_grouped_folds_never_leak_a_slide():
    adata = _tiles(7, 30)
    slides = adata.obs[K.SLIDE_ID].astype(str).to_numpy()
    y = adata.obs["label"].to_numpy()
    for labels in (None, y):
        folds = group_kfold(adata, 5, y=labels)
        assert len(folds) == 5
        seen = np.concatenate([te for _, te in folds])
        assert sorted(seen) == list(range(adata.n_obs))  # every row tested exactly once
        for tr, te in folds:
            assert set(slides[tr]).isdisjoint(slides[te])
            assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == adata.n_obs
    assert cv_groups(adata, 5).kind == "group"
    # the same seed gives the same folds
    a, b = group_kfold(adata, 5, y=y, seed=3), group_kfold(adata, 5, y=y, seed=3)
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b, strict=True))


def test_spatial_block_fallback_warns_and_keeps_blocks_disjoint():
    adata = _tiles(2, 100)  # 2 slides, 5 folds
    with pytest.warns(UserWarning, match="spatial-block"):
        g = cv_groups(adata, 5)
    assert g.kind == "spatial-block"
    slides = adata.obs[K.SLIDE_ID].astype(str).to_numpy()
    xy = adata.obs[[K.X, K.Y]].to_numpy()
    # a block lies inside one slide, and blocks of a slide do not overlap in space
    for sid in np.unique(slides):
        boxes = []
        for b in np.unique(g.groups[slides == sid]):
            assert set(slides[g.groups == b]) == {sid}
            pts = xy[g.groups == b]
            boxes.append((*pts.min(0), *pts.max(0)))
        for i, p in enumerate(boxes):
            for q in boxes[i + 1 :]:
                assert p[2] < q[0] or q[2] < p[0] or p[3] < q[1] or q[3] < p[1], (p, q)
    with pytest.warns(UserWarning, match="spatial-block"):
        folds = group_kfold(adata, 5, y=adata.obs["label"].to_numpy())
    for tr, te in folds:
        assert set(g.groups[tr]).isdisjoint(g.groups[te])
        assert len(te) > 0
    with pytest.raises(DataError, match="spatial_block=True"):
        cv_groups(adata, 5, spatial_block=False)


def test_row_grouping_and_other_split_errors():
    adata = _tiles(1, 20)
    assert cv_groups(adata, 5, groups=None).kind == "row"
    with pytest.raises(DataError, match="no obs column 'patient'"):
        cv_groups(adata, 5, groups="patient")
    with pytest.raises(DataError, match="n_splits"):
        cv_groups(adata, 1)
    with pytest.raises(DataError, match="fewer folds"):
        cv_groups(adata, 50)
    del adata.obs[K.X]
    with pytest.raises(DataError, match="tile positions"):
        cv_groups(adata, 5)


@pytest.mark.parametrize("method", ["logreg", "knn"])
def test_probe_reads_a_separable_label(method):
    adata = _tiles(6, 40)
    df = mm.tl.linear_probe(adata, label="label", use_rep="X_feat", method=method)
    assert list(df.index) == [0, 1, 2, 3, 4, "mean", "std"]
    assert {"balanced_accuracy", "f1_weighted", "auroc_macro", "n_train", "n_test"} <= set(df)
    assert df.loc["mean", "balanced_accuracy"] > 0.9  # chance is 1/3
    assert df.loc["mean", "auroc_macro"] > 0.95
    assert df.loc[:4, "n_test"].sum() == adata.n_obs
    cm = df.attrs["confusion_matrix"]
    assert cm.to_numpy().sum() == adata.n_obs and list(cm.index) == ["c0", "c1", "c2"]
    assert np.trace(cm.to_numpy()) / adata.n_obs > 0.9
    assert df.attrs["cv"] == "group" and df.attrs["params"]["method"] == method
    # deterministic
    again = mm.tl.linear_probe(adata, label="label", use_rep="X_feat", method=method)
    pd.testing.assert_frame_equal(df, again)


def test_grouping_removes_slide_leakage():
    """Labels are constant per slide and features identify the slide but carry no label:
    free row splits score high by recognising slides, slide-grouped folds sit near chance."""
    rng = np.random.default_rng(1)
    adata = _tiles(10, 30, signal=0.0, seed=1)
    slide = adata.obs[K.SLIDE_ID].astype(str).to_numpy()
    lab = {f"s{i}": f"c{i % 2}" for i in range(10)}
    adata.obs["label"] = [lab[s] for s in slide]
    offsets = {s: rng.normal(0, 3, 16) for s in lab}
    adata.obsm["X_feat"] = adata.obsm["X_feat"] + np.stack([offsets[s] for s in slide])
    leaky = mm.tl.linear_probe(adata, label="label", use_rep="X_feat", method="knn", groups=None)
    honest = mm.tl.linear_probe(adata, label="label", use_rep="X_feat", method="knn")
    assert leaky.loc["mean", "balanced_accuracy"] > 0.95
    assert honest.loc["mean", "balanced_accuracy"] < 0.75


def test_probe_with_one_slide_uses_spatial_blocks():
    adata = _tiles(1, 90)
    with pytest.warns(UserWarning, match="spatial-block"):
        df = mm.tl.linear_probe(adata, label="label", use_rep="X_feat", n_splits=3)
    assert df.attrs["cv"] == "spatial-block" and len(df) == 5


def test_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    classes = np.array(["a", "b", "c", "d"])
    y = classes[rng.integers(0, 4, 200)]
    p = rng.dirichlet(np.ones(4), 200)
    p[np.arange(200), np.searchsorted(classes, y)] += 0.3
    p /= p.sum(1, keepdims=True)
    want = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=classes)
    assert auroc_macro_ovr(y, p, classes) == pytest.approx(want, abs=1e-12)
    yb = classes[:2][rng.integers(0, 2, 100)]
    pb = rng.random(100)
    two = np.column_stack([1 - pb, pb])
    assert auroc_macro_ovr(yb, two, classes[:2]) == pytest.approx(roc_auc_score(yb == "b", pb))
    # a fold without class "d": the mean over the classes present (sklearn raises here)
    keep = y != "d"
    sub = [roc_auc_score(y[keep] == c, p[keep, j]) for j, c in enumerate(classes[:3])]
    assert auroc_macro_ovr(y[keep], p[keep], classes) == pytest.approx(np.mean(sub))


def test_probe_metrics_equal_sklearn_on_the_folds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    adata = _tiles(5, 30, signal=0.8)
    df = mm.tl.linear_probe(adata, label="label", use_rep="X_feat", seed=2)
    y = adata.obs["label"].astype(str).to_numpy()
    X = adata.obsm["X_feat"].astype(np.float64)
    for i, (tr, te) in enumerate(group_kfold(adata, 5, y=y, seed=2)):
        m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=2))
        pred = m.fit(X[tr], y[tr]).predict(X[te])
        assert df.loc[i, "balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[te], pred))
        assert df.loc[i, "f1_weighted"] == pytest.approx(
            f1_score(y[te], pred, average="weighted", zero_division=0)
        )


def test_probe_errors():
    adata = _tiles(6, 10)
    with pytest.raises(DataError, match="no obs column 'tissue_type'"):
        mm.tl.linear_probe(adata, label="tissue_type", use_rep="X_feat")
    with pytest.raises(DataError, match="no obsm\\['X_uni'\\]"):
        mm.tl.linear_probe(adata, label="label", use_rep="X_uni")
    with pytest.raises(DataError, match="unknown probe method"):
        mm.tl.linear_probe(adata, label="label", use_rep="X_feat", method="svm")
    adata.obs["one"] = "x"
    with pytest.raises(DataError, match="at least 2"):
        mm.tl.linear_probe(adata, label="one", use_rep="X_feat")
    adata.obs["some"] = adata.obs["label"].astype(object)
    adata.obs.loc[adata.obs_names[:5], "some"] = None  # unlabelled rows are left out
    df = mm.tl.linear_probe(adata, label="some", use_rep="X_feat")
    assert df.loc[:4, "n_test"].sum() == adata.n_obs - 5


def test_cli_probe_writes_a_report(tmp_path, capsys):
    import json

    from mmpath.cli import main

    adata = _tiles(6, 30)
    path = mm.io.write_h5ad(adata, tmp_path / "tiles.h5ad")
    rc = main(
        [
            "probe",
            str(path),
            "--use-rep",
            "X_feat",
            "--label",
            "label",
            "--method",
            "knn",
            "--folds",
            "3",
            "-o",
            str(tmp_path / "report"),
        ]
    )
    assert rc == 0
    assert "balanced accuracy" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["cv"] == "group" and report["params"]["n_splits"] == 3
    assert report["mean"]["balanced_accuracy"] > 0.9 and len(report["folds"]) == 3
    metrics = pd.read_csv(tmp_path / "report" / "metrics.csv", index_col=0)
    assert list(metrics.index) == ["0", "1", "2", "mean", "std"]
    cm = pd.read_csv(tmp_path / "report" / "confusion.csv", index_col=0)
    assert cm.to_numpy().sum() == adata.n_obs
    assert main(["probe", str(path), "--use-rep", "X_nope", "--label", "label"]) == 2
