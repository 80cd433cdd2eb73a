"""mm.metrics for slides: C-index and Cox loss against lifelines and brute force, folds."""

from __future__ import annotations

import numpy as np
import pytest

import mmpath as mm
from mmpath.errors import DataError


def _surv(n, seed):
    rng = np.random.default_rng(seed)
    return rng.exponential(1.0, n), rng.normal(size=n), (rng.random(n) < 0.6).astype(int)


def _brute_cindex(t, r, e):
    num = den = 0.0
    for i in range(len(t)):
        for j in range(len(t)):
            if e[i] and t[i] < t[j]:
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    return num / den


def _brute_cox(t, r, e):
    total = 0.0
    for i in np.flatnonzero(e):
        total += r[i] - np.log(np.exp(r[t >= t[i]]).sum())
    return -total / e.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concordance_index_equals_lifelines_and_brute_force(seed):
    lifelines = pytest.importorskip("lifelines.utils")
    t, r, e = _surv(120, seed)
    r[:10] = r[10:20]  # some tied risks
    ours = mm.metrics.concordance_index(t, r, e)
    assert ours == pytest.approx(_brute_cindex(t, r, e), abs=1e-12)
    assert ours == pytest.approx(lifelines.concordance_index(t, -r, e), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_cox_loss_equals_brute_force_lifelines_and_torch(seed):
    t, r, e = _surv(80, seed)
    ref = _brute_cox(t, r, e)
    assert mm.metrics.cox_ph_loss(t, r, e) == pytest.approx(ref, rel=1e-10)
    tt = np.round(t, 1)  # tied times: Breslow risk sets
    assert mm.metrics.cox_ph_loss(tt, r, e) == pytest.approx(_brute_cox(tt, r, e), rel=1e-10)
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchmil")
    from mmpath.models.heads.mil import cox_loss

    for times in (t, tt):
        got = cox_loss(torch.tensor(r), torch.tensor(times), torch.tensor(e)).item()
        assert got == pytest.approx(mm.metrics.cox_ph_loss(times, r, e), rel=1e-5)
    # lifelines' fitted Cox model: its partial log-likelihood at the MLE is ours x n_events
    lifelines = pytest.importorskip("lifelines")
    import pandas as pd

    x = r + np.random.default_rng(seed).normal(0, 0.5, len(r))
    df = pd.DataFrame({"x": x, "t": t, "e": e})
    fit = lifelines.CoxPHFitter().fit(df, "t", "e")
    beta = float(fit.params_["x"])
    ll = -mm.metrics.cox_ph_loss(t, beta * x, e) * e.sum()
    assert ll == pytest.approx(fit.log_likelihood_, rel=1e-6)
    worse = -mm.metrics.cox_ph_loss(t, (beta + 0.1) * x, e) * e.sum()
    assert worse < ll


def test_classification_scores_and_confusion():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.eye(3)[[0, 1, 1, 1, 2, 2]] * 0.8 + 0.2 / 3
    s = mm.metrics.classification_scores(y, p, ["a", "b", "c"])
    assert s.balanced_accuracy == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.confusion.loc["b", "c"] == 1 and s.confusion.to_numpy().sum() == 6
    with pytest.raises(DataError, match="proba must be"):
        mm.metrics.classification_scores(y, p[:, :2], ["a", "b", "c"])


def test_patient_kfold_never_splits_a_patient():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 30, 80).astype(str)
    labels = rng.integers(0, 2, 80)
    folds = mm.metrics.patient_kfold(patients, labels, 5, seed=1)
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(80))
    for tr, te in folds:
        assert not set(patients[tr]) & set(patients[te])
    with pytest.raises(DataError, match="patients cannot fill"):
        mm.metrics.patient_kfold(["a", "a", "b"], None, 3)


def test_metrics_is_a_leaf():
    import ast
    from pathlib import Path

    root = Path(mm.metrics.__file__).parent
    for f in root.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                for n in names:
                    assert not n.startswith(("mmpath.tl", "mmpath.train", "mmpath.models")), n
                    assert not n.startswith("torch"), (f.name, n)
