"""Finding and loading model weights offline.

Resolution order (first match wins), as ARCHITECTURE.md §3 fixes it:

1. an explicit file or folder (``weights=`` / ``--weights``);
2. ``local-dir:/path`` (our own format: ``config.yaml`` + ``model.safetensors``; handled by
   :func:`mmpath.models.create_encoder`, which reads the config too);
3. ``$MMPATH_HOME/weights/<name>/`` (what ``mmpath weights install`` fills), then a pip
   package that bundles the folder when the entry names one (MiniLM);
4. the Hugging Face cache, then the hub, through ``huggingface_hub`` (``HF_HUB_OFFLINE=1``
   means cache only). Network failures never hang: the hub is asked with a short timeout and
   any failure becomes one :class:`~mmpath.errors.WeightsError` naming every place looked and
   how to provide the weights.

Files load with safetensors when possible, otherwise ``torch.load(weights_only=True)``; a
sha256 is checked when the entry carries one. Loading is strict: a checkpoint whose keys or
shapes do not match the architecture raises :class:`~mmpath.errors.WeightsError` with a short
list of what differs.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpath._weights import (  # noqa: F401 - re-exported: their home is torch-free
    DEFAULT_FILES,
    WeightsSpec,
    _from_hub,
    _offline,
    weights_dir,
)
from mmpath._weights import package_dir as _light_package_dir
from mmpath._weights import resolve_weights as _resolve
from mmpath.errors import WeightsError
from mmpath.io._digest import sha256_file

log = logging.getLogger(__name__)

__all__ = ["WeightsSpec", "resolve_weights", "read_state_dict", "load_strict", "weights_dir"]


def _package_dir(package: str) -> Path | None:
    """The folder a pip package bundles (``"module:subdir"``), or ``None``."""
    return _light_package_dir(package)


def resolve_weights(
    name: str, spec: WeightsSpec | None = None, explicit: str | os.PathLike[str] | None = None
) -> Path:
    """Find the weights of entry ``name`` (see :func:`mmpath._weights.resolve_weights`).

    Example
    -------
    >>> resolve_weights("uni", WeightsSpec(hub_id="MahmoodLab/UNI"))  # doctest: +SKIP
    PosixPath('/root/.cache/mmpath/weights/uni')
    """
    return _resolve(name, spec, explicit, package_dir=_package_dir)


SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _pick_file(folder: Path, files: Iterable[str]) -> list[Path]:
    for index in SHARD_INDEXES:
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise WeightsError(f"{folder / index} is not a valid shard index ({err})") from None
            return [folder / f for f in sorted(set(weight_map.values()))]
    for fname in (*files, *DEFAULT_FILES):
        if (folder / fname).is_file():
            return [folder / fname]
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
    raise WeightsError(
        f"no weights file in {folder} (expected one of {', '.join(DEFAULT_FILES[:4])}...; "
        f"found {present})"
    )


def _reader_message(err: BaseException) -> str:
    """A reader's whole error on one line (torch's weights_only refusal: its reason part)."""
    text = " ".join(str(err).split()) or type(err).__name__
    cut = text.find("WeightsUnpickler error:")
    return text[cut:] if cut >= 0 else text


def _read_one(path: Path, *, lazy: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of one file; ``lazy`` memory-maps pickled checkpoints (shapes, no data)."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():  # torch's pickle-protocol notes: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
            except RuntimeError as err:
                if not lazy or "mmap" not in str(err):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as err:  # noqa: BLE001 - every reader error means "unreadable"
        raise WeightsError(
            f"cannot read weights {path}: the file is corrupt or not a checkpoint "
            f"({_reader_message(err)}); download it again"
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def read_state_dict(
    location: str | os.PathLike[str], *, files: Iterable[str] = (), sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """Read a state dict from a weights file or a model folder (sharded checkpoints merged).

    Example
    -------
    >>> sd = read_state_dict("/models/uni")  # doctest: +SKIP
    """
    location = Path(location)
    paths = _pick_file(location, files) if location.is_dir() else [location]
    if sha256 and len(paths) == 1:
        actual = sha256_file(paths[0])
        if actual != sha256.lower():
            raise WeightsError(
                f"sha256 of {paths[0]} is {actual[:12]}..., expected {sha256[:12]}...: the file "
                "is corrupt or a different model; download it again"
            )
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(_read_one(path))
    if state and all(k.startswith("module.") for k in state):  # saved from DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    log.info("read %d tensors from %s", len(state), location)
    return state


def _brief(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(module: nn.Module, state_dict: Mapping[str, Any], *, name: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with a readable WeightsError.

    Example
    -------
    >>> load_strict(model, read_state_dict(path), name="uni")  # doctest: +SKIP
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (file vs model): {_brief(wrong, 3)}")
        if missing:
            parts.append(f"{len(missing)} missing keys: {_brief(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_brief(unexpected)}")
        raise WeightsError(
            f"weights do not match encoder {name!r}: {'; '.join(parts)}. "
            "Are these the weights of a different model?"
        )
    module.load_state_dict(dict(state_dict), strict=True)
