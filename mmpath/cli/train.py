"""``mmpath train <task> --config run.yaml [--set key=value ...] [--resume]``.

Tasks come from :data:`mmpath.train.TASK_MODULES` (``clip``, ``ssl``; later ``expr``,
``seg``, ``anomaly``): each loads its own run-config class, so unknown keys fail before any
work starts. The run folder (``out``) receives ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/last.pt`` and the trained ``model/`` folder.
"""

from __future__ import annotations

import logging
import os

from mmpath.cli._common import summary

log = logging.getLogger(__name__)


def register(sub) -> None:
    from mmpath.train.registry import list_tasks

    p = sub.add_parser(
        "train",
        help="train a model (contrastive image-text, self-supervised, heads) from a YAML config",
        description="Train a model from a YAML run config; writes a model folder loadable "
        "with --encoder local-dir:<out>/model.",
    )
    p.add_argument("task", choices=list_tasks(), help="what to train")
    p.add_argument("--config", required=True, help="YAML run config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--out", default=None, help="run folder (overrides `out` in the config)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from mmpath.config import load_config
    from mmpath.train import fit, get_task

    spec = get_task(args.task)
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if getattr(args, "quiet", False):
        overrides.append("train.quiet=true")
    cfg = load_config(spec.config, args.config, overrides)
    if spec.run is not None:  # several fits (e.g. cross-validation folds), each through fit
        result = spec.run(cfg, resume=args.resume)
    else:
        result = fit(spec.build, cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return 0
    last = result.losses[-1] if result.losses else float("nan")
    val = ""
    if result.val:
        val = ", " + ", ".join(f"{k}={v:.3f}" for k, v in result.val[-1]["val"].items())
    summary(
        args,
        f"trained {args.task}: {result.steps} steps, loss {last:.4f}{val}; "
        f"model folder {result.model_dir}",
    )
    return 0
