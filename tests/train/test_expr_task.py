"""Expression heads are registered heads and train through the one loop (in memory too)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_expression_heads_are_registry_entries():
    from mmpath.models.heads import heads

    for name in ("expr-mlp", "expr-gated", "expr-contrastive"):
        assert heads.get(name).meta.task == "expression"
    mlp = heads.create("expr-mlp", d_in=5, d_out=3, hidden=8)
    assert mlp(torch.zeros(4, 5)).shape == (4, 3)
    gated = heads.create("expr-gated", d_img=5, d_gen=2, d_out=3, hidden=8)
    assert gated(torch.zeros(4, 5), torch.zeros(4, 2)).shape == (4, 3)
    img, expr = heads.create("expr-contrastive", d_img=5, n_genes=3, dim=6)(
        torch.randn(4, 5), torch.randn(4, 3)
    )
    assert img.shape == expr.shape == (4, 6)
    np.testing.assert_allclose(img.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)


def test_in_memory_fit_runs_the_shared_loop_and_writes_nothing(tmp_path, monkeypatch):
    from mmpath.tl.expression._model import ExpressionModel, resolve_params
    from mmpath.train.tasks.expr import fit_in_memory

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 6)).astype(np.float32)
    Y = (X[:, :2] @ rng.normal(size=(2, 3))).astype(np.float32)
    params = resolve_params("mlp", None, {"epochs": 30, "batch_size": 32, "hidden": 16, "lr": 1e-2})
    model = ExpressionModel(
        method="mlp",
        genes=["a", "b", "c"],
        use_rep="X_t",
        encoder=None,
        targets={},
        params=params,
    )
    history = fit_in_memory(model, X, Y)
    assert len(history) == 30  # one mean loss per epoch (3 whole batches each)
    assert history[-1] < 0.5 * history[0]
    assert list(tmp_path.iterdir()) == []  # no run folder, checkpoint or metrics log
    pred = model.predict_arrays(X)
    r = [np.corrcoef(pred[:, j], Y[:, j])[0, 1] for j in range(3)]
    assert min(r) > 0.9, r
    # the same seed gives the same weights: the loop is deterministic
    again = ExpressionModel(**{**model.__dict__, "state": {}, "history": []})
    fit_in_memory(again, X, Y)
    np.testing.assert_array_equal(again.predict_arrays(X), pred)


def test_persist_false_refuses_resume():
    from mmpath.errors import ConfigError
    from mmpath.train.core import fit

    with pytest.raises(ConfigError, match="persist=False"):
        fit(lambda cfg, env: None, type("C", (), {"train": None})(), resume=True, persist=False)
