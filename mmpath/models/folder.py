"""One model-folder format for every trained model: encoders, heads and expression models.

A model folder holds two files::

    config.yaml          format (mmpath-encoder | mmpath-head | mmpath-expression), version,
                         mmpath_version, the model's own fields, and sha256 of the weights
    model.safetensors    the tensors (plain arrays: loading never unpickles code)

plus whatever a model keeps beside them (an encoder's tokenizer folder, a stain target, an
expression model's cross-validation report). :func:`write_model_folder` writes both files into
a (temporary, see :func:`mmpath.io._atomic.atomic_path`) folder; :func:`read_model_folder`
reads the config, checks its format and the weights' sha256, and says what a folder of another
format holds.

Folders written before this format still load: heads' ``head.yaml`` + ``model.safetensors``
and expression models' ``config.json`` + ``genes.txt`` + ``weights.safetensors``
(:data:`LEGACY`); their loaders read them through :func:`read_model_folder` too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmpath._version import __version__
from mmpath.errors import ConfigError, WeightsError
from mmpath.io._digest import sha256_file

__all__ = [
    "ModelFolder",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMATS",
    "write_model_folder",
    "read_model_folder",
    "folder_format",
    "check_replaceable_model",
    "sha256_file",
]

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
FORMATS = {
    "mmpath-encoder": "an encoder",
    "mmpath-head": "a trained head",
    "mmpath-expression": "an expression model",
}
#: format -> (config file, weights file) of folders written by older versions
LEGACY: dict[str, tuple[str, str]] = {
    "mmpath-head": ("head.yaml", WEIGHTS_NAME),
    "mmpath-expression": ("config.json", "weights.safetensors"),
}


@dataclass
class ModelFolder:
    """A model folder read by :func:`read_model_folder`.

    Attributes
    ----------
    path
        The folder.
    format
        ``mmpath-encoder``, ``mmpath-head`` or ``mmpath-expression``.
    config
        The parsed config (``format``/``version``/``sha256`` included).
    weights
        The tensors file.
    legacy
        ``True`` for a folder in a format written before :mod:`mmpath.models.folder`.
    """

    path: Path
    format: str
    config: dict[str, Any]
    weights: Path
    legacy: bool = False

    @property
    def kind(self) -> str | None:
        """The model's kind within its format (``seg``/``anomaly``/``mil`` for heads)."""
        return self.config.get("kind")

    def tensors(self, framework: str = "pt") -> dict[str, Any]:
        """The weights as torch tensors (``"pt"``) or numpy arrays (``"np"``)."""
        if not self.weights.is_file():
            raise WeightsError(
                f"{str(self.path)!r} has no {self.weights.name}; the run did not finish"
            )
        if framework == "np":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        return dict(load_file(str(self.weights)))


def write_model_folder(
    folder: str | os.PathLike[str],
    fmt: str,
    config: dict[str, Any],
    tensors: dict[str, Any],
) -> Path:
    """Write ``model.safetensors`` (torch tensors or numpy arrays) and ``config.yaml``.

    ``config`` holds the model's own fields (plain YAML values); ``format``, ``version``,
    ``mmpath_version`` and the weights' ``sha256`` are added. ``folder`` must exist (callers
    write into an :func:`~mmpath.io._atomic.atomic_path` temporary folder).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown model folder format {fmt!r}; one of {sorted(FORMATS)}")
    folder = Path(folder)
    weights = folder / WEIGHTS_NAME
    values = list(tensors.values())
    if values and type(values[0]).__module__.startswith("numpy"):
        import numpy as np
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(weights))
    else:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(state, str(weights), metadata={"format": "pt"})
    head = {"format": fmt, "version": 1, "mmpath_version": __version__}
    body = {k: v for k, v in config.items() if k not in head and k != "sha256"}
    full = {**head, **body, "sha256": sha256_file(weights)}
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")
    return folder


def folder_format(folder: str | os.PathLike[str]) -> str | None:
    """The format of the model folder at ``folder`` (legacy layouts included), or ``None``."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if path.is_file():
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            return None
        fmt = config.get("format") if isinstance(config, dict) else None
        return fmt if fmt in FORMATS else None
    for fmt, (cfg_name, weights) in LEGACY.items():
        if (folder / cfg_name).is_file() and (folder / weights).is_file():
            return fmt
    if (folder / "head.yaml").is_file():
        return "mmpath-head"
    return None


def read_model_folder(
    folder: str | os.PathLike[str], fmt: str, *, verify: bool = True
) -> ModelFolder:
    """Read the ``fmt`` model folder at ``folder`` (current or legacy layout).

    Raises :class:`~mmpath.errors.WeightsError` when the folder holds another format, a
    config that does not parse, or (``verify``) weights whose sha256 differs from the
    config's.
    """
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if path.is_file():
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise WeightsError(f"{path} is not valid YAML ({err})") from None
        found = config.get("format") if isinstance(config, dict) else None
        if found != fmt:
            held = FORMATS.get(found, "no mmpath model")
            raise WeightsError(f"{path} is not an {fmt} config (it holds {held})")
        weights = folder / WEIGHTS_NAME
        want = config.get("sha256")
        if verify and want and weights.is_file() and sha256_file(weights) != want:
            raise WeightsError(
                f"{str(weights)!r} does not match the sha256 in its {CONFIG_NAME} (changed or "
                "damaged); save the model again"
            )
        return ModelFolder(folder, fmt, config, weights)
    if fmt in LEGACY:
        cfg_name, weights = LEGACY[fmt]
        legacy = folder / cfg_name
        if legacy.is_file():
            text = legacy.read_text(encoding="utf-8")
            try:
                config = json.loads(text) if cfg_name.endswith(".json") else yaml.safe_load(text)
            except (ValueError, yaml.YAMLError) as err:
                raise WeightsError(f"{legacy} does not parse ({err})") from None
            return ModelFolder(folder, fmt, dict(config or {}), folder / weights, legacy=True)
    raise WeightsError(f"{str(folder)!r} is not {FORMATS.get(fmt, fmt)} folder (no {CONFIG_NAME})")


def check_replaceable_model(target: str | os.PathLike[str], fmt: str, what: str) -> None:
    """Refuse to replace ``target`` as a whole unless it is empty or a ``fmt`` model folder
    (current or legacy layout): saving swaps the whole directory."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{str(target)!r} is a file; pass a folder to save the {what} into")
    if target.is_dir() and any(target.iterdir()) and folder_format(target) != fmt:
        raise ConfigError(
            f"{str(target)!r} already holds files and is not a saved {what} (no {CONFIG_NAME} "
            f"of format {fmt}); saving replaces the whole folder, so choose a new or empty one"
        )
