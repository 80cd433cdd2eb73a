"""U-Net and VAE heads: shapes, fine-tuning modes, losses vs reference libraries, folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from mmpath.errors import ConfigError, ModelError
from mmpath.models.heads import (
    DiceCELoss,
    TrainedHead,
    UNetHead,
    VAEHead,
    load_trained_head,
    reparameterize,
    save_trained_head,
    soft_dice,
)
from mmpath.models.registry import create_encoder, heads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # 2 cores shared by many processes: OpenMP spin-waiting makes small convs ~30x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("tiny_vit")


def test_registry_entries():
    assert {"unet", "vae"} <= set(heads.list())
    assert heads.get("unet").meta.task == "seg"
    assert heads.get("unetr").name == "unet"
    assert heads.get("vae").meta.task == "anomaly"


@pytest.mark.parametrize("num_classes", [1, 3])
def test_unet_shapes_and_probabilities(encoder, num_classes):
    head = UNetHead(
        encoder, num_classes=num_classes, decoder_channels=4, stem_channels=4, input_size=32
    )
    head.eval()
    x = torch.randn(2, 3, 32, 32)
    assert head(x).shape == (2, num_classes, 32, 32)
    p = head.predict_proba(x)
    assert p.shape == (2, max(2, num_classes), 32, 32)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 32, 32))
    # tiny_vit has 2 blocks: the default indices=4 is reduced to every block
    assert head.config.indices == 2 and head.stride == 16
    with pytest.raises(ModelError, match="multiple of the encoder stride"):
        head(torch.randn(1, 3, 40, 40))


def test_finetune_modes(encoder):
    def n_trainable(module):
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    head = UNetHead(encoder, decoder_channels=4, stem_channels=4, input_size=32)
    total = sum(p.numel() for p in head.encoder.parameters())
    assert n_trainable(head.encoder) == 0
    head.train()
    assert not head.encoder.training  # a frozen encoder stays in eval mode
    head.set_finetune("partial", unfreeze_last=1)
    last_block = sum(p.numel() for p in head.encoder.model.blocks[-1].parameters())
    assert n_trainable(head.encoder) == last_block
    head.set_finetune("full")
    assert n_trainable(head.encoder) == total
    head.train()
    assert head.encoder.training
    # gradients reach the encoder only when it trains
    head(torch.randn(2, 3, 32, 32)).mean().backward()
    assert head.encoder.model.blocks[0].attn.qkv.weight.grad is not None
    with pytest.raises(ModelError, match="finetune"):
        head.set_finetune("some")


def test_soft_dice_on_hard_predictions_equals_sklearn_f1():
    rng = np.random.default_rng(0)
    C = 4
    target = rng.integers(0, 3, (3, 16, 16))  # class 3 absent from target ...
    pred = rng.integers(0, 3, (3, 16, 16))  # ... and from the prediction: empty class
    probs = F.one_hot(torch.from_numpy(pred), C).permute(0, 3, 1, 2).double()
    ours = soft_dice(probs, torch.from_numpy(target), eps=1e-12).numpy()
    ref = f1_score(target.ravel(), pred.ravel(), labels=range(C), average=None, zero_division=1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    # the loss's Dice term on near one-hot logits is 1 - macro F1
    logits = 40.0 * (probs * 2 - 1)
    out = DiceCELoss()(logits, torch.from_numpy(target))
    np.testing.assert_allclose(out.dice.item(), 1 - ref.mean(), atol=1e-6)
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, torch.from_numpy(target)))


def test_binary_loss_matches_two_class_form():
    torch.manual_seed(0)
    z = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.5).long()
    one = DiceCELoss()(z, target)
    # sigmoid(z) == softmax([0, z])[1], and BCE(z) == CE([0, z])
    two = DiceCELoss()(torch.cat([torch.zeros_like(z), z], 1), target)
    torch.testing.assert_close(one.total, two.total)
    # ignored pixels do not count
    ign = target.clone()
    ign[:, :4] = 255
    a = DiceCELoss(ignore_index=255)(z, ign)
    b = DiceCELoss()(z[:, :, 4:], target[:, 4:])
    torch.testing.assert_close(a.ce, b.ce)
    torch.testing.assert_close(a.dice, b.dice)


def test_reparameterisation_is_differentiable():
    torch.manual_seed(0)
    mu = torch.randn(4, 8, requires_grad=True)
    logvar = torch.randn(4, 8, requires_grad=True)
    torch.manual_seed(1)
    z = reparameterize(mu, logvar)
    torch.manual_seed(1)
    eps = torch.randn(4, 8)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(4, 8))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)
    # and through the module: the encoder's mu/logvar layer gets gradients from both terms
    vae = VAEHead(image_size=16, latent_dim=4, base_channels=4).train()
    x = torch.rand(3, 3, 16, 16)
    out = vae(x)
    vae.loss(x, out).total.backward()
    g = vae.to_stats.weight.grad
    assert g is not None and g[:4].abs().sum() > 0 and g[4:].abs().sum() > 0


def test_vae_kl_matches_torch_distributions_and_prior_samples_decode():
    vae = VAEHead(image_size=32, latent_dim=6, base_channels=4)
    x = torch.rand(5, 3, 32, 32)
    out = vae.train()(x)
    loss = vae.loss(x, out, beta=0.5)
    q = torch.distributions.Normal(out.mu, torch.exp(0.5 * out.logvar))
    p = torch.distributions.Normal(torch.zeros_like(out.mu), torch.ones_like(out.mu))
    kl_ref = torch.distributions.kl_divergence(q, p).sum() / 5
    torch.testing.assert_close(loss.kl, kl_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss.recon, F.mse_loss(out.recon, x, reduction="sum") / 5)
    torch.testing.assert_close(loss.total, loss.recon + 0.5 * loss.kl)
    samples = vae.eval().sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 3, 32, 32)
    assert samples.min() >= 0 and samples.max() <= 1
    scores = vae.anomaly(x)
    assert scores.error_map.shape == (5, 32, 32)
    torch.testing.assert_close(scores.recon_error, scores.error_map.flatten(1).mean(1))
    with pytest.raises(ModelError, match="32"):
        vae(torch.rand(1, 3, 24, 24))


def test_vae_on_backbone_features(encoder):
    vae = heads.create("vae", encoder="backbone", backbone=encoder, image_size=16, latent_dim=4)
    out = vae.train()(torch.rand(2, 3, 16, 16))
    assert out.recon.shape == (2, 3, 16, 16)
    assert not any(p.requires_grad for p in vae.backbone.parameters())
    with pytest.raises(ModelError, match="backbone"):
        VAEHead(encoder="backbone")


def test_model_folder_round_trip_and_wrong_kind(tmp_path, encoder):
    head = UNetHead(
        create_encoder("tiny_vit"),
        num_classes=3,
        decoder_channels=4,
        stem_channels=4,
        input_size=32,
    ).eval()
    save_trained_head(TrainedHead("seg", head, ("a", "b", "c"), 32, 0.5), tmp_path / "seg")
    loaded = load_trained_head(tmp_path / "seg", kind="seg")
    assert loaded.class_names == ("a", "b", "c") and loaded.tile_size == 32 and loaded.mpp == 0.5
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), head(x))

    vae = VAEHead(image_size=16, latent_dim=4, base_channels=4).eval()
    save_trained_head(TrainedHead("anomaly", vae, (), 16), tmp_path / "run" / "model")
    assert load_trained_head(tmp_path / "run", kind="anomaly").model.config.latent_dim == 4
    with pytest.raises(ModelError, match="holds an anomaly .VAE. model, not a segmentation"):
        load_trained_head(tmp_path / "run", kind="seg")
    with pytest.raises(ModelError, match="holds a segmentation"):
        load_trained_head(tmp_path / "seg", kind="anomaly")
    enc_dir = tmp_path / "enc"
    enc_dir.mkdir()
    (enc_dir / "config.yaml").write_text("family: timm\n")
    with pytest.raises(ModelError, match="holds an encoder"):
        load_trained_head(enc_dir, kind="seg")
    with pytest.raises(ModelError, match="does not exist"):
        load_trained_head(tmp_path / "nope", kind="seg")
    # saving replaces a folder as a whole: never one holding something else (a run, data)
    with pytest.raises(ConfigError, match="not a saved trained head"):
        save_trained_head(TrainedHead("anomaly", vae, (), 16), tmp_path / "run")
    assert (tmp_path / "run" / "model" / "config.yaml").is_file()
    save_trained_head(TrainedHead("anomaly", vae, (), 16), tmp_path / "run" / "model")  # update
