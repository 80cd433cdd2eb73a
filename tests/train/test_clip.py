"""Contrastive image-text training: it learns a known rule, matches open_clip, reloads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmpath.errors import ConfigError, DataError
from mmpath.train import fit, get_task
from mmpath.train.dist import DistEnv
from mmpath.train.synthetic import CLASSES

from .train_helpers import clip_overrides, make_config


@pytest.fixture(scope="module")
def trained(caption_sets, tmp_path_factory):
    """tiny_clip trained from scratch for 4 short epochs (36 steps) on 270 textures."""
    train, val = caption_sets
    out = tmp_path_factory.mktemp("clip") / "run"
    cfg = make_config("clip", clip_overrides(train, val, out))
    return cfg, fit(get_task("clip").build, cfg)


def _val_images(val_csv, encoder, size=48):
    from mmpath.train.augment import AugmentConfig
    from mmpath.train.data import ImageDataset, TableConfig, load_table

    table = load_table([str(val_csv)], TableConfig(), captions=True)
    data = encoder.info.data
    ds = ImageDataset(
        table,
        np.arange(len(table)),
        size=size,
        mean=data.mean,
        std=data.std,
        augment=AugmentConfig.none(),
    )
    return torch.stack([ds[i][0] for i in range(len(ds))]), table.captions


def test_learns_the_caption_rule(trained, caption_sets):
    from mmpath.models import create_encoder

    cfg, result = trained
    assert result.steps == 36
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:3]) - 1.0
    enc = create_encoder(f"local-dir:{result.model_dir}")
    images, captions = _val_images(caption_sets[1], enc)
    with torch.no_grad():
        img = enc.encode_image(images).proj
        txt = enc.encode_text(enc.tokenize(list(CLASSES)))
    pred = np.asarray(CLASSES)[(img @ txt.T).argmax(1).numpy()]
    accuracy = float(np.mean(pred == np.asarray(captions)))
    chance = 1 / len(CLASSES)
    assert accuracy > chance + 0.4, accuracy  # held-out zero-shot: chance is 0.11
    last = result.val[-1]["val"]
    assert last["i2t_r@1"] > chance + 0.4
    assert last["t2i_r@1"] > chance + 0.4
    assert [v["epoch"] for v in result.val] == [0, 1, 2, 3]


def test_run_folder_and_reload_embed_identically(trained, caption_sets):
    from mmpath.models import create_encoder

    cfg, result = trained
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert (run / "checkpoints" / "last.pt").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in lines) == 36
    # the saved config reproduces the run's config exactly
    from mmpath.config import load_config

    assert load_config(type(cfg), run / "config.yaml") == cfg
    # the model folder reloads through the registry and embeds like the trained module
    task = get_task("clip").build(cfg, DistEnv())
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    task.module.load_state_dict(state)
    task.module.eval()
    enc = create_encoder(f"local-dir:{result.model_dir}")
    assert enc.info.data.input_size == 48
    images, _ = _val_images(caption_sets[1], enc)
    tokens = enc.tokenize(["purple dots", "pink stripes"])
    with torch.no_grad():
        assert torch.equal(
            enc.encode_image(images[:8]).proj, task.encoder.encode_image(images[:8]).proj
        )
        assert torch.equal(enc.encode_text(tokens), task.encoder.encode_text(tokens))
        assert torch.equal(enc.logit_scale, task.encoder.logit_scale)


def _batch(task, n=12):
    from mmpath.train.core import SampleKey

    items = [task.train_dataset()[SampleKey(i, 0)] for i in range(n)]
    return task.collate(items)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_loss_equals_open_clip_reference(caption_sets, tmp_path, kind):
    from open_clip.loss import ClipLoss, SigLipLoss

    train, _ = caption_sets
    cfg = make_config("clip", clip_overrides(train, None, tmp_path, **{"loss.kind": kind}))
    task = get_task("clip").build(cfg, DistEnv())
    batch = _batch(task)
    img, txt, scale = task.module(batch)
    ours = task.loss((img, txt, scale), batch).total
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    if kind == "clip":
        ref = ClipLoss()(img, txt, scale)
        by_hand = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    else:
        bias = task.module.logit_bias
        ref = SigLipLoss()(img, txt, scale, bias)
        sign = 2 * torch.eye(len(img)) - 1
        by_hand = -F.logsigmoid(sign * (logits + bias)).sum() / len(img)
        assert float(scale.detach()) == pytest.approx(10.0)  # SigLIP init: scale 10, bias -10
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-5)


def test_heads_mode_trains_only_projections(caption_sets, tmp_path):
    train, val = caption_sets
    cfg = make_config(
        "clip",
        clip_overrides(
            train,
            val,
            tmp_path / "run",
            **{"model.mode": "heads", "train.max_steps": 2, "train.val_every_epochs": 0},
        ),
    )
    task = get_task("clip").build(cfg, DistEnv())
    before = {k: v.clone() for k, v in task.encoder.state_dict().items()}
    fit(task, cfg)
    after = task.encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"image_proj.weight", "text_proj.weight", "logit_scale"}


def test_lit_locks_the_real_minilm_text_tower(caption_sets, tmp_path, testdata):
    train, val = caption_sets
    cfg = make_config(
        "clip",
        clip_overrides(
            train,
            val,
            tmp_path / "run",
            **{
                "model.name": "null",
                "model.mode": "lit",
                "model.image": "tiny_vit",
                "model.text": "minilm",
                "model.proj_dim": 32,
                "model.text_kwargs": "{weights: " + str(testdata / "minilm") + "}",
                "train.max_steps": 2,
                "train.batch_size": 10,
                "train.val_every_epochs": 0,
            },
        ),
    )
    task = get_task("clip").build(cfg, DistEnv())
    before = {k: v.clone() for k, v in task.encoder.state_dict().items()}
    task.module.train()
    assert not task.encoder.text.training and task.encoder.image.training  # no dropout
    result = fit(task, cfg)
    after = task.encoder.state_dict()
    text_keys = [k for k in before if k.startswith("text.")]
    assert text_keys and all(torch.equal(before[k], after[k]) for k in text_keys)
    assert not torch.equal(before["image_proj.weight"], after["image_proj.weight"])
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("image."))
    # checkpoints hold only what trains: the locked tower is rebuilt from its weights
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not any(k.startswith("encoder.text.") for k in state)


def test_lit_export_refers_to_the_locked_registry_tower(caption_sets, tmp_path):
    import yaml

    from mmpath.models import create_encoder

    train, val = caption_sets
    overrides = {
        "model.name": "null",
        "model.mode": "lit",
        "model.image": "tiny_vit",
        "model.text": "minilm",  # found by the resolver (the pip package), no kwargs
        "model.proj_dim": 32,
        "train.max_steps": 1,
        "train.batch_size": 10,
        "train.val_every_epochs": 0,
    }
    cfg = make_config("clip", clip_overrides(train, val, tmp_path / "run", **overrides))
    task = get_task("clip").build(cfg, DistEnv())
    result = fit(task, cfg)
    saved = yaml.safe_load((result.model_dir / "config.yaml").read_text())
    assert "ref: minilm" in yaml.safe_dump(saved)  # a reference, not a 90 MB copy
    assert (result.model_dir / "model.safetensors").stat().st_size < 5_000_000
    enc = create_encoder(f"local-dir:{result.model_dir}")
    tokens = enc.tokenize(["dense nuclei"])
    with torch.no_grad():
        assert torch.allclose(enc.encode_text(tokens), task.encoder.encode_text(tokens))


def test_unknown_config_key_is_a_config_error(caption_sets, tmp_path):
    train, val = caption_sets
    with pytest.raises(ConfigError, match="unknown key"):
        make_config("clip", clip_overrides(train, val, tmp_path, **{"train.learning_rate": 1}))
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: tiny_clip, pretrained_tower: x}\n")
    from mmpath.config import load_config

    with pytest.raises(ConfigError, match="pretrained_tower"):
        load_config(get_task("clip").config, path)


def test_empty_caption_table_is_a_data_error(tmp_path):
    pd.DataFrame({"image": [], "caption": []}).to_csv(tmp_path / "empty.csv", index=False)
    cfg = make_config("clip", clip_overrides(tmp_path / "empty.csv", None, tmp_path / "run"))
    with pytest.raises(DataError, match="is empty"):
        get_task("clip").build(cfg, DistEnv())
    pd.DataFrame({"image": ["a.png"], "caption": [""]}).to_csv(tmp_path / "blank.csv", index=False)
    cfg = make_config("clip", clip_overrides(tmp_path / "blank.csv", None, tmp_path / "run"))
    with pytest.raises(DataError, match="empty 'caption'"):
        get_task("clip").build(cfg, DistEnv())


def test_missing_images_are_a_data_error(caption_sets, tmp_path):
    frame = pd.read_csv(caption_sets[0]).head(5)
    frame["image"] = [str(caption_sets[0].parent / p) for p in frame["image"]]
    frame.loc[2, "image"] = "nowhere/missing.png"
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    cfg = make_config("clip", clip_overrides(tmp_path / "pairs.csv", None, tmp_path / "run"))
    with pytest.raises(DataError, match="1 of 5 image files .* do not exist"):
        get_task("clip").build(cfg, DistEnv())


def test_retrieval_recall_counts_distinct_captions():
    """A caption shared by 28 rows must not make recall look high (issue 11)."""
    import torch

    from mmpath.train.metrics import retrieval_recall

    caps = ["a"] * 28 + ["b", "c"]
    e = torch.eye(3)
    txt = e[[0] * 28 + [1, 2]]
    img = e[[0] * 28 + [2, 1]]  # b's image looks like c's text and vice versa
    got = retrieval_recall(img, txt, caps, ks=(1, 5))
    assert got["i2t_r@1"] == pytest.approx(1 / 3) and got["t2i_r@1"] == pytest.approx(1 / 3)
    assert got["n_captions"] == 3 and got["chance_i2t_r@1"] == pytest.approx(1 / 3)
    assert got["i2t_r@5"] == 1.0 and got["chance_i2t_r@5"] == 1.0  # k >= 3 is trivial
    # unique captions: the usual paired recall
    u = retrieval_recall(torch.eye(4), torch.eye(4), list("wxyz"), ks=(1,))
    assert u["i2t_r@1"] == 1.0 and u["t2i_r@1"] == 1.0 and u["n_captions"] == 4


def test_lit_text_cache_gives_bit_identical_losses(caption_sets, tmp_path, testdata):
    """The locked MiniLM runs once per distinct caption; the losses do not change a bit."""
    train, val = caption_sets
    runs = {}
    for cache in (False, True):
        cfg = make_config(
            "clip",
            clip_overrides(
                train,
                val,
                tmp_path / f"run{cache}",
                **{
                    "model.name": "null",
                    "model.mode": "lit",
                    "model.image": "tiny_vit",
                    "model.text": "minilm",
                    "model.proj_dim": 32,
                    "model.cache_text": str(cache).lower(),
                    "model.text_kwargs": "{weights: " + str(testdata / "minilm") + "}",
                    "train.max_steps": 4,
                    "train.batch_size": 10,
                    "train.log_every_steps": 1,
                    "train.val_every_epochs": 0,
                },
            ),
        )
        torch.manual_seed(0)  # the same random image tower and projections in both runs
        task = get_task("clip").build(cfg, DistEnv())
        assert task.cache_text is cache
        runs[cache] = (fit(task, cfg), task)
    assert runs[True][0].losses == runs[False][0].losses  # exact, not approximate
    cached = runs[True][1].module._text_cache
    captions = set(map(str, runs[True][1].train_set.table.captions))
    assert 0 < len(cached) <= len(captions)  # one entry per distinct caption seen
    assert not runs[False][1].module._text_cache
