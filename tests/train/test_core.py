"""The shared loop: schedule, checkpoints and resume, task registry, bookkeeping errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmpath.errors import ConfigError, DataError
from mmpath.train import fit, get_task, list_tasks
from mmpath.train.dist import DistEnv

from .train_helpers import clip_overrides, make_config


class _InterruptError(Exception):
    pass


def _small(caption_sets, out, **extra):
    train, _ = caption_sets
    opts = {
        "data.val_fraction": 0.2,
        "train.batch_size": 12,
        "train.epochs": 2,
        "train.ckpt_every_steps": 4,
        "train.lr": 2e-3,
        **extra,
    }
    return make_config("clip", clip_overrides(train, None, out, **opts))


def test_resume_reproduces_the_uninterrupted_loss_curve(caption_sets, tmp_path):
    build = get_task("clip").build
    ref = fit(build, _small(caption_sets, tmp_path / "ref", **{"train.max_steps": 10}))
    assert ref.steps == 10

    cfg = _small(caption_sets, tmp_path / "cut", **{"train.max_steps": 10})

    def stop(step, loss):
        if step == 7:  # after the step-4 checkpoint, before the step-8 one
            raise _InterruptError

    with pytest.raises(_InterruptError):
        fit(build, cfg, on_step=stop)
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and len(state["losses"]) == 4
    with pytest.raises(ConfigError, match="--resume"):
        fit(build, cfg)  # a fresh start would overwrite the interrupted run
    resumed = fit(build, cfg, resume=True)
    assert resumed.steps == 10
    assert resumed.losses == ref.losses  # bit for bit: same batches, same RNG, same state
    assert [v["val"] for v in resumed.val] == [v["val"] for v in ref.val]
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 11))
    for a, b in zip(
        torch.load(tmp_path / "ref/checkpoints/last.pt", weights_only=True)["model"].values(),
        torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"].values(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_schedule_is_open_clips_cosine_with_warmup():
    from mmpath.train.core import cosine_lambda

    # open_clip_train.scheduler.cosine_lr, written out (open_clip_train is not on PyPI)
    def open_clip_lr(step, base, warmup, steps):
        if step < warmup:
            return base * (step + 1) / warmup
        e, es = step - warmup, steps - warmup
        return 0.5 * (1 + math.cos(math.pi * e / es)) * base

    f = cosine_lambda(5, 50)
    for step in range(50):
        assert 0.1 * f(step) == pytest.approx(open_clip_lr(step, 0.1, 5, 50), rel=1e-12)


def test_task_registry_lists_and_rejects():
    assert {"clip", "ssl"} <= set(list_tasks())
    spec = get_task("ssl")
    assert spec.name == "ssl" and spec.config.__name__ == "SslRunConfig"
    with pytest.raises(ConfigError, match="unknown training task 'nope'"):
        get_task("nope")


def test_batch_larger_than_data_and_all_frozen_are_clear(caption_sets, tmp_path):
    cfg = _small(caption_sets, tmp_path / "a", **{"train.batch_size": 10_000})
    with pytest.raises(DataError, match="fewer than train.batch_size"):
        fit(get_task("clip").build, cfg)
    task = get_task("clip").build(_small(caption_sets, tmp_path / "b"), DistEnv())
    task.module.requires_grad_(False)
    with pytest.raises(ConfigError, match="nothing to train"):
        fit(task, _small(caption_sets, tmp_path / "b"))


@pytest.mark.gpu
def test_amp_on_cuda(caption_sets, tmp_path):
    cfg = _small(
        caption_sets,
        tmp_path / "gpu",
        **{"train.max_steps": 3, "train.precision": "bf16", "train.device": "cuda"},
    )
    result = fit(get_task("clip").build, cfg)
    assert result.steps == 3 and all(math.isfinite(v) for v in result.losses)
