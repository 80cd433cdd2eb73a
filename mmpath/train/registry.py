"""Training tasks by name: ``mmpath train <task>`` and :func:`mmpath.train.get_task`.

A task module registers a builder with :func:`register_task` and names its run-config
dataclass; :data:`TASK_MODULES` says which module to import for each name, so listing tasks
(the CLI's help) imports neither torch nor the task code. A later capability plugs in by adding
one line to :data:`TASK_MODULES` and decorating its builder::

    @register_task("expr", config=ExprRunConfig, help="image -> expression heads")
    def build(cfg: ExprRunConfig, env: DistEnv) -> TrainingTask: ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmpath._registry import Registry
from mmpath.errors import ConfigError

__all__ = ["TaskSpec", "TASK_MODULES", "register_task", "get_task", "list_tasks"]

#: task name -> module that registers it (imported on first use)
TASK_MODULES: dict[str, str] = {
    "clip": "mmpath.train.clip",
    "ssl": "mmpath.train.ssl",
    "seg": "mmpath.train.tasks.seg",
    "anomaly": "mmpath.train.tasks.anomaly",
    "expr": "mmpath.train.tasks.expr",
    "mil": "mmpath.train.tasks.mil",
}

_tasks: Registry = Registry("training task")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its run-config class and its builder ``(cfg, env) -> task``."""

    name: str
    config: type
    build: Callable[..., Any]
    help: str = ""
    #: a task that is more than one fit (e.g. k-fold CV) runs as ``run(cfg, resume=...)``
    run: Callable[..., Any] | None = None


def register_task(
    name: str, *, config: type, help: str = "", run: Callable[..., Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a task builder under ``name`` with its run-config class.

    ``run(cfg, resume=..., on_step=...) -> FitResult`` replaces the single :func:`fit` of the
    CLI for tasks made of several fits (cross-validation folds); it calls ``fit`` itself.
    """

    def deco(build: Callable[..., Any]) -> Callable[..., Any]:
        _tasks.register(name, meta=TaskSpec(name, config, build, help, run))(build)
        return build

    return deco


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` registered as ``name`` (importing its module if needed).

    Example
    -------
    >>> spec = get_task("clip")
    >>> cfg = load_config(spec.config, "configs/clip-tiny.yaml")
    """
    if name not in _tasks and name in TASK_MODULES:
        try:
            importlib.import_module(TASK_MODULES[name])
        except ModuleNotFoundError as err:
            if not TASK_MODULES[name].startswith(str(err.name or "?")):
                raise
            raise ConfigError(
                f"training task {name!r} is not available in this installation "
                f"({TASK_MODULES[name]} is missing)"
            ) from None
    if name not in _tasks:
        raise ConfigError(
            f"unknown training task {name!r}; choose one of {', '.join(list_tasks())}"
        )
    return _tasks.get(name).meta


def list_tasks() -> list[str]:
    """Names of every known task (registered or importable)."""
    return sorted(set(TASK_MODULES) | set(_tasks))
