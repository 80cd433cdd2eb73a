"""The one training loop every task (clip, ssl, expr, seg, anomaly) runs through.

A task is a :class:`TrainingTask`: it owns a ``module`` (an ``nn.Module`` whose
``forward(batch)`` returns whatever its ``loss`` reads), a map-style training dataset, a loss,
an optional validation hook and an export that writes a model folder. :func:`fit` supplies
the rest, the same way for all of them:

* AdamW (no weight decay on gains, biases and logit scales, as open_clip) and a cosine
  schedule with linear warm-up (open_clip's ``cosine_lr`` formula, as a ``LambdaLR`` so it
  checkpoints);
* gradient clipping, AMP autocast on CUDA (bf16, or fp16 with a grad scaler), plain fp32 on
  the CPU;
* a tqdm progress bar (``train.quiet``), per-step losses in ``<out>/metrics.jsonl``;
* validation every ``train.val_every_epochs`` epochs (rank 0);
* atomic checkpoints every ``train.ckpt_every_steps`` steps and at each epoch end, and
  ``resume=True`` to continue from the last one;
* torch.distributed DDP (torchrun; gloo on the CPU, NCCL on GPUs).

Determinism. Each epoch's sample order comes from ``(seed, epoch)`` and each sample's
augmentation from ``(seed, epoch, index)`` (datasets receive :class:`SampleKey` items), so a
resumed run replays exactly the batches of an uninterrupted one regardless of DataLoader
workers, and a run on N processes sees the same global batches as a run on one: rank ``r``
takes slice ``r`` of every global batch.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, default_collate

from mmpath.config import save_config, to_dict
from mmpath.errors import ConfigError, DataError
from mmpath.io._atomic import atomic_path, recover
from mmpath.train import checkpoint as ckpt
from mmpath.train.config import TrainConfig
from mmpath.train.dist import (
    DistEnv,
    _pick_device,
    barrier,
    init_distributed,
    mean_across,
    shutdown,
)

log = logging.getLogger(__name__)

__all__ = ["TrainingTask", "LossOutput", "SampleKey", "FitResult", "fit", "MODEL_DIR"]

MODEL_DIR = "model"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


class SampleKey(NamedTuple):
    """What a training dataset's ``__getitem__`` receives: the row and the epoch."""

    index: int
    epoch: int


class LossOutput(NamedTuple):
    """A task's loss: the scalar to minimise and named parts to log (detached floats)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = {}


class TrainingTask(abc.ABC):
    """What a task hands to :func:`fit`.

    Subclasses set ``self.module`` (trained, wrapped in DDP when distributed) and implement
    :meth:`train_dataset`, :meth:`loss` and :meth:`export`; :meth:`collate`,
    :meth:`after_step` and :meth:`evaluate` have sensible defaults.

    Example
    -------
    >>> class Regress(TrainingTask):
    ...     def __init__(self, cfg, env):
    ...         self.module = nn.Linear(4, 1)
    ...     def train_dataset(self): return MyDataset()      # __getitem__(SampleKey)
    ...     def loss(self, output, batch): return LossOutput(((output - batch[1])**2).mean())
    ...     def forward(self, module, batch): return module(batch[0])
    ...     def export(self, folder): save_file(self.module.state_dict(), folder / "w.st")
    """

    module: nn.Module
    #: DDP's find_unused_parameters (set True if some trainable parameters skip a step)
    find_unused_parameters: bool = False

    @abc.abstractmethod
    def train_dataset(self) -> Any:
        """A map-style dataset indexed by :class:`SampleKey`."""

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    def forward(self, module: nn.Module, batch: Any) -> Any:
        """Run the (possibly DDP-wrapped) module on a batch; by default ``module(batch)``."""
        return module(batch)

    @abc.abstractmethod
    def loss(self, output: Any, batch: Any) -> LossOutput:
        """The loss of one step from ``forward``'s output."""

    def after_step(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called after every optimiser step (e.g. clamp a logit scale)."""

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Validation metrics after ``epoch`` (rank 0 only, no grad, module in eval mode)."""
        return {}

    @abc.abstractmethod
    def export(self, folder: Path) -> None:
        """Write the trained model folder (e.g. with ``mmpath.models.save_encoder``)."""

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """open_clip's rule: no decay on 1-d params (gains, biases), norms and logit scales."""
        return param.ndim < 2 or any(s in name for s in ("bn", "ln", "bias", "logit_scale"))


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    run_dir: Path | None  # None for an in-memory fit (``persist=False``)
    model_dir: Path | None
    steps: int
    losses: list[float]  # one per optimiser step, averaged over processes
    val: list[dict[str, Any]] = field(default_factory=list)  # one per validated epoch


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """This rank's slice of every global batch of one epoch, from ``(seed, epoch)``."""

    def __init__(
        self, n: int, global_batch: int, env: DistEnv, *, seed: int, epoch: int, skip: int = 0
    ):
        self.n, self.global_batch, self.env = n, global_batch, env
        self.seed, self.epoch, self.skip = seed, epoch, skip
        self.steps = n // global_batch

    def __len__(self) -> int:
        return self.steps - self.skip

    def __iter__(self) -> Iterator[list[SampleKey]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        local = self.global_batch // self.env.world_size
        for b in range(self.skip, self.steps):
            start = b * self.global_batch + self.env.rank * local
            yield [SampleKey(int(i), self.epoch) for i in order[start : start + local]]


def cosine_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """open_clip's ``cosine_lr`` as a multiplier of the base lr, for ``LambdaLR``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))

    return factor


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    want = cfg.precision
    if device.type != "cuda":
        if want in ("bf16", "fp16"):
            log.info(
                "train.precision=%s: AMP runs on CUDA only; training in fp32 on %s", want, device
            )
        return "fp32"
    if want == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return want


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if hasattr(obj, "to") and isinstance(obj, tuple):  # NamedTuples with .to (Tokens)
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _param_groups(task: TrainingTask, wd: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in task.module.named_parameters():
        if p.requires_grad:
            (no_decay if task.no_weight_decay(name, p) else decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("nothing to train: every parameter of the model is frozen")
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def _adamw(task: TrainingTask, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused when torch supports it for these parameters (several times faster on
    the CPU than the per-tensor default), else the multi-tensor implementation."""
    groups = _param_groups(task, tc.weight_decay)
    kwargs = dict(lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _MetricsLog:
    """``metrics.jsonl`` (rank 0): one line per step and one per validation."""

    def __init__(self, path: Path | None, env: DistEnv, *, keep_until: int | None) -> None:
        self.path, self.env = path, env
        if path is not None and env.is_main:
            lines = []
            if keep_until is not None and path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until:
                        lines.append(line)
            with atomic_path(path) as tmp:
                tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.path is not None and self.env.is_main and records:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in records)


def fit(
    task: TrainingTask | Callable[[Any, DistEnv], TrainingTask],
    cfg: Any,
    *,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    persist: bool = True,
) -> FitResult:
    """Train ``task`` as ``cfg.train`` says; write checkpoints and a model folder to ``cfg.out``.

    Parameters
    ----------
    task
        A task builder ``(cfg, env) -> TrainingTask`` (what the task registry holds; it is
        called after seeding and joining the process group), or a built task.
    cfg
        The task's run config: a frozen dataclass with ``out`` and ``train`` (a
        :class:`~mmpath.train.config.TrainConfig`).
    resume
        Continue from ``<out>/checkpoints/last.pt``.
    on_step
        Called as ``on_step(step, loss)`` on every rank after each logged step (tests use it
        to interrupt a run).
    persist
        ``False``: an in-memory fit in this process (no process group, no run folder, no
        checkpoints, metrics log or model folder; ``cfg.out`` is ignored). The trained
        ``task.module`` is the result; :func:`mmpath.tl.fit_expression` fits its small heads
        this way, through the same loop as ``mmpath train expr``.

    Returns
    -------
    A :class:`FitResult` with the per-step loss curve and the model folder.

    Example
    -------
    >>> from mmpath.config import load_config
    >>> from mmpath.train import get_task, fit
    >>> spec = get_task("clip")
    >>> cfg = load_config(spec.config, "configs/clip-tiny.yaml", ["train.epochs=2"])
    >>> result = fit(spec.build, cfg)
    >>> result.model_dir      # load it with create_encoder(f"local-dir:{result.model_dir}")
    """
    tc: TrainConfig = cfg.train
    if not persist:
        if resume:
            raise ConfigError("resume=True needs a run folder; it cannot go with persist=False")
        env = DistEnv(device=_pick_device(tc.device, 0))
        return _fit(task, cfg, tc, None, env, resume=False, on_step=on_step)
    out = Path(cfg.out)
    env = init_distributed(tc.device)
    try:
        return _fit(task, cfg, tc, out, env, resume=resume, on_step=on_step)
    finally:
        shutdown(env)


def _fit(task, cfg, tc: TrainConfig, out: Path | None, env: DistEnv, *, resume: bool, on_step):
    persist = out is not None
    if tc.batch_size % env.world_size:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} does not split over {env.world_size} processes; "
            "use a multiple of the process count"
        )
    ckpt_file = ckpt.checkpoint_path(out) if persist else None
    if persist and env.is_main:  # leftovers of a crashed earlier run
        for path in (ckpt_file, out / MODEL_DIR):
            recover(path)
    if persist and not resume and ckpt_file.exists():
        raise ConfigError(
            f"{str(out)!r} already holds a training run; pass --resume (resume=True) to continue "
            "it or choose another out folder"
        )
    _seed_everything(tc.seed)
    if not isinstance(task, TrainingTask):
        task = task(cfg, env)
    device = env.device
    precision = _precision(tc, device)
    module = task.module.to(device)

    dataset = task.train_dataset()
    n = len(dataset)
    if n < tc.batch_size:
        raise DataError(
            f"the training set has {n} samples, fewer than train.batch_size={tc.batch_size}; "
            "add data or lower train.batch_size"
        )
    steps_per_epoch = n // tc.batch_size
    total = tc.epochs * steps_per_epoch
    if tc.max_steps:
        total = min(total, tc.max_steps)

    optimizer = _adamw(task, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(tc.warmup_steps, total))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision in ("bf16", "fp16")
        else contextlib.nullcontext()
    )

    step, losses, val_history = 0, [], []
    if resume:
        state = ckpt.load_checkpoint(ckpt_file)
        kind = state.get("config_type")
        if kind and kind != type(cfg).__name__:
            raise ConfigError(
                f"{str(out)!r} holds a run of another task ({kind}, not "
                f"{type(cfg).__name__}); resume it with its own task (see its config.yaml) "
                "or choose another out folder"
            )
        ckpt.load_trainable(module, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, losses, val_history = state["step"], list(state["losses"]), list(state["val"])
        saved = {k: v for k, v in state.get("config", {}).items() if k != "train"}
        current = {k: v for k, v in to_dict(cfg).items() if k != "train"}
        if saved and saved != current:
            log.warning(
                "resuming %s with a config that differs from the checkpoint's outside `train`; "
                "the loss curve will not match an uninterrupted run",
                out,
            )
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
        log.info("resumed %s at step %d/%d", out, step, total)
    if persist and env.is_main:  # only now: a refused resume must leave its config.yaml alone
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / CONFIG)
    metrics = _MetricsLog(
        out / METRICS if persist else None, env, keep_until=step if resume else None
    )

    wrapped: nn.Module = module
    if env.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters,
        )
    trainable = [p for p in module.parameters() if p.requires_grad]
    pending: list[tuple[int, torch.Tensor, float]] = []

    def flush() -> None:
        if not pending:
            return
        values = mean_across(env, torch.stack([v for _, v, _ in pending]).float()).cpu()
        records = []
        for (s, _, lr), v in zip(pending, values.tolist(), strict=True):
            losses.append(v)
            records.append({"step": s, "loss": v, "lr": lr})
        metrics.write(records)
        pending.clear()
        if on_step is not None:
            on_step(records[-1]["step"], records[-1]["loss"])

    def save() -> None:
        flush()
        if not persist:
            return
        rngs = _gather_rng(env)
        if env.is_main:
            ckpt.save_checkpoint(
                ckpt_file,
                {
                    "step": step,
                    "model": ckpt.trainable_state(module),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "losses": list(losses),
                    "val": list(val_history),
                    "rng": rngs,
                    "config": to_dict(cfg),
                    "config_type": type(cfg).__name__,
                },
            )
        barrier(env)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=step,
        disable=tc.quiet or not env.is_main,
        file=sys.stderr,
        desc=f"train {out.name if persist else type(task).__name__}",
        unit="step",
        dynamic_ncols=True,
    )
    first_epoch = step // steps_per_epoch
    for epoch in range(first_epoch, tc.epochs):
        if step >= total:
            break
        skip = step - epoch * steps_per_epoch
        sampler = EpochBatchSampler(n, tc.batch_size, env, seed=tc.seed, epoch=epoch, skip=skip)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=task.collate,
            num_workers=tc.num_workers,
            pin_memory=device.type == "cuda",
            # the iterator's worker base seed comes from this generator, not the global torch
            # RNG: a loader made on resume mid-epoch must not shift dropout's random stream
            generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch),
        )
        module.train()
        for batch in loader:
            batch = _to_device(batch, device)
            with autocast:
                output = task.forward(wrapped, batch)
                result = task.loss(output, batch)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(result.total).backward()
                if tc.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                result.total.backward()
                if tc.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            task.after_step()
            step += 1
            pending.append((step, result.total.detach(), lr))
            bar.update(1)
            end_of_epoch = step % steps_per_epoch == 0 or step >= total
            if step % tc.log_every_steps == 0:
                flush()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if tc.ckpt_every_steps and step % tc.ckpt_every_steps == 0 and not end_of_epoch:
                save()
            if step >= total:
                break
        flush()
        if tc.val_every_epochs and ((epoch + 1) % tc.val_every_epochs == 0 or step >= total):
            record = _validate(task, module, env, epoch, step)
            if record is not None:
                val_history.append(record)
                metrics.write([record])
        save()
    bar.close()

    module.eval()
    if not persist:
        return FitResult(None, None, step, list(losses), list(val_history))
    model_dir = out / MODEL_DIR
    if env.is_main:
        with atomic_path(model_dir) as tmp:
            tmp.mkdir(parents=True)
            task.export(tmp)
        log.info("trained %d steps; model folder %s", step, model_dir)
    barrier(env)
    return FitResult(out, model_dir, step, list(losses), list(val_history))


def _validate(task, module, env: DistEnv, epoch: int, step: int) -> dict[str, Any] | None:
    record = None
    if env.is_main:
        module.eval()
        with torch.no_grad():
            values = task.evaluate(epoch)
        module.train()
        if values:
            record = {"epoch": epoch, "step": step, "val": {k: float(v) for k, v in values.items()}}
            shown = ", ".join(f"{k}={v:.3f}" for k, v in record["val"].items())
            log.info("epoch %d: %s", epoch, shown)
    barrier(env)
    return record


def _gather_rng(env: DistEnv) -> list[dict[str, Any]]:
    from mmpath.train.dist import all_gather_object

    return all_gather_object(env, ckpt.rng_state())
