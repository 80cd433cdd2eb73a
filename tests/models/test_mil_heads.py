"""MIL heads from the registry: shapes, masking, attention, and the model folder round trip."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmil", reason="MIL heads need torchmil (pip install 'mmpath[mil]')")

KINDS = ["abmil", "transmil", "mean-mlp", "max-mlp"]


@pytest.mark.parametrize("kind", KINDS)
def test_head_shapes_masking_and_attention(kind):
    from mmpath.models.registry import heads

    torch.manual_seed(0)
    head = heads.create(kind, in_dim=16, n_outputs=3, hidden=32, att_dim=8).eval()
    assert heads.get(kind).meta.task == "mil"
    a, b = torch.randn(1, 23, 16), torch.randn(1, 9, 16)
    x = torch.zeros(2, 23, 16)
    x[0], x[1, :9] = a[0], b[0]
    mask = torch.zeros(2, 23, dtype=torch.bool)
    mask[0], mask[1, :9] = True, True
    with torch.no_grad():
        batch = head(x, mask)
        single = head(b)
    assert batch.logits.shape == (2, 3)
    # padding never changes a bag's output
    torch.testing.assert_close(batch.logits[1], single.logits[0], rtol=1e-4, atol=1e-5)
    if kind in ("abmil", "transmil"):
        assert head.has_attention
        torch.testing.assert_close(batch.attention.sum(1), torch.ones(2), rtol=0, atol=1e-5)
        assert (batch.attention[1, 9:] == 0).all()
        torch.testing.assert_close(batch.attention[1, :9], single.attention[0])
    else:
        assert batch.attention is None and not head.has_attention


def test_abmil_pool_is_torchmil_attention_pool():
    """The gated pool is torchmil's own; its weights are the softmax of its logits."""
    from torchmil.nn import AttentionPool

    from mmpath.models.heads.mil import MILConfig, MILHead

    head = MILHead(MILConfig("abmil", in_dim=8, n_outputs=2, hidden=16, att_dim=4)).eval()
    assert isinstance(head.pool, AttentionPool) and head.pool.gated
    x = torch.randn(1, 11, 8)
    with torch.no_grad():
        h = head.proj(x)
        z, f = head.pool(h, None, return_att=True)
        out = head(x)
    torch.testing.assert_close(out.attention, f.softmax(-1))
    torch.testing.assert_close(out.logits, head.classifier(z))


@pytest.mark.parametrize("kind", ["abmil", "max-mlp"])
def test_model_folder_round_trip(kind, tmp_path):
    from mmpath.errors import ModelError
    from mmpath.models.heads import TrainedHead, load_trained_head, save_trained_head
    from mmpath.models.heads.mil import MILConfig, MILHead

    head = MILHead(MILConfig(kind, in_dim=8, n_outputs=2, hidden=16, att_dim=4)).eval()
    extra = {"task": "classification", "use_rep": "X_a", "in_dim": 8}
    save_trained_head(TrainedHead("mil", head, ("a", "b"), 0, extra=extra), tmp_path / "m")
    back = load_trained_head(tmp_path / "m", kind="mil")
    assert back.class_names == ("a", "b") and back.extra["use_rep"] == "X_a"
    x = torch.randn(1, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(back.model(x).logits, head(x).logits)
    with pytest.raises(ModelError, match="slide-level"):
        load_trained_head(tmp_path / "m", kind="seg")
