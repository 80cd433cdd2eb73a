"""mm.metrics is the one home of the array metrics and fold helpers; old names forward to it."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import mmpath as mm

# old module, old name -> the mm.metrics name it must be (the same object, not a copy)
MOVED = [
    ("mmpath.tl", "dice_jaccard"),
    ("mmpath.tl", "anomaly_metrics"),
    ("mmpath.tl", "group_kfold"),
    ("mmpath.tl", "cv_groups"),
    ("mmpath.tl.seg_metrics", "dice_jaccard"),
    ("mmpath.tl.seg_metrics", "confusion_counts"),
    ("mmpath.tl.seg_metrics", "check_labels"),
    ("mmpath.tl.seg_metrics", "anomaly_metrics"),
    ("mmpath.tl.seg_metrics", "binary_labels"),
    ("mmpath.tl._splits", "group_kfold"),
    ("mmpath.tl._splits", "folds_from_groups"),
    ("mmpath.tl._splits", "cv_groups"),
    ("mmpath.tl._splits", "CVGroups"),
    ("mmpath.tl.probe", "auroc_macro_ovr"),
    ("mmpath.tl.expression", "pearson_per_gene"),
    ("mmpath.tl.expression._metrics", "per_gene_scores"),
    ("mmpath.tl.expression._metrics", "spearman_per_gene"),
]


@pytest.mark.parametrize(("module", "name"), MOVED)
def test_old_names_warn_and_are_the_new_objects(module, name):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{name} moved to mm\.metrics\.{name}"):
        old = getattr(mod, name)
    assert old is getattr(mm.metrics, name)
    with pytest.raises(AttributeError):
        mod.no_such_name  # noqa: B018


def test_moved_names_left_tl_all():
    for name in ("dice_jaccard", "anomaly_metrics", "group_kfold", "cv_groups"):
        assert name not in mm.tl.__all__ and name in mm.metrics.__all__


def test_index_retrieval_metrics_are_the_metrics_ones():
    for name in ("top_k_accuracy", "majority_vote_at_k", "recall_at_k", "majority_vote"):
        assert getattr(mm.index, name) is getattr(mm.metrics, name)
    assert mm.metrics.majority_vote_at_k([["a", "b", "b"], ["a", "a", "b"]], ["b", "b"], 3) == 0.5


def test_patient_kfold_honours_the_seed_without_labels():
    """Unstratified folds (survival, regression) used to ignore the seed: same folds always."""
    patients = np.repeat(np.arange(40).astype(str), 2)

    def tests(seed):
        return [tuple(te) for _, te in mm.metrics.patient_kfold(patients, None, 5, seed=seed)]

    assert tests(0) == tests(0)
    assert tests(0) != tests(1)
    for seed in (0, 1):
        folds = mm.metrics.patient_kfold(patients, None, 5, seed=seed)
        assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(80))
        for tr, te in folds:
            assert not set(patients[tr]) & set(patients[te])
            assert tr.dtype.kind == "i" and te.dtype.kind == "i"


def test_patient_kfold_is_the_group_kfold_splitter():
    """One splitter: patient folds equal folds_from_groups on the same groups and labels."""
    rng = np.random.default_rng(3)
    patients = rng.integers(0, 25, 90).astype(str)
    labels = rng.integers(0, 3, 90)
    for y in (labels, None):
        a = mm.metrics.patient_kfold(patients, y, 4, seed=7)
        g = mm.metrics.CVGroups(patients, "patient")
        b = mm.metrics.folds_from_groups(g, 4, y=None if y is None else y.astype(str), seed=7)
        for (tr1, te1), (tr2, te2) in zip(a, b, strict=True):
            assert np.array_equal(tr1, tr2) and np.array_equal(te1, te2)


def test_classification_auroc_is_auroc_macro_ovr():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    s = mm.metrics.classification_scores(y, p, ["a", "b", "c"])
    assert s.auroc == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    assert s.auroc == mm.metrics.auroc_macro_ovr(y, p, np.arange(3))
    yb = rng.integers(0, 2, 60)
    pb = rng.dirichlet(np.ones(2), 60)
    sb = mm.metrics.classification_scores(yb, pb, ["a", "b"])
    assert sb.auroc == pytest.approx(roc_auc_score(yb, pb[:, 1]), abs=1e-12)
