"""Two CPU processes (gloo) train exactly like one process on the same global batches."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket

import pytest

from mmpath.train import fit, get_task

from .train_helpers import clip_overrides, make_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, queue) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    try:
        result = fit(get_task("clip").build, cfg)
        queue.put((rank, result.losses, result.val))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        queue.put((rank, repr(err), None))


def _config(caption_sets, out, **extra):
    train, _ = caption_sets
    opts = {
        "data.val_fraction": 0.2,
        "train.batch_size": 12,
        "train.max_steps": 4,
        "train.lr": 2e-3,
        **extra,
    }
    return make_config("clip", clip_overrides(train, None, out, **opts))


@pytest.mark.parametrize("kind", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
def test_two_processes_match_one(caption_sets, tmp_path, kind):
    single = fit(
        get_task("clip").build, _config(caption_sets, tmp_path / "one", **{"loss.kind": kind})
    )
    cfg = _config(caption_sets, tmp_path / "two", **{"loss.kind": kind})
    ctx = mp.get_context("fork")  # children inherit the imports: seconds, not tens of seconds
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, cfg, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (losses, val)) for r, losses, val in (queue.get(timeout=300) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), results
    for rank in (0, 1):
        losses = results[rank][0]
        assert not isinstance(losses, str), losses
        assert losses == pytest.approx(single.losses, rel=1e-5, abs=1e-5)
    assert len(single.losses) == 4
    # losses after the first step only match if the gradients (all-gathered features,
    # DDP-averaged) did too; the model folder is written once, by rank 0
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    assert results[0][1][-1]["val"] == pytest.approx(single.val[-1]["val"], abs=1e-6)
