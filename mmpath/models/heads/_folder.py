"""Model folders of trained heads, in the one model-folder format (:mod:`mmpath.models.folder`).

``mmpath train seg|anomaly|mil`` writes ``<run>/model/`` with:

* ``config.yaml`` (``format: mmpath-head``, ``sha256`` of the weights): ``kind`` (``"seg"``,
  ``"anomaly"`` or ``"mil"``), ``head`` (registry name), the head's
  config, class names, the tile geometry (``tile_size``, ``mpp``, ``mean``, ``std``) and, when
  the head sits on the shared backbone, how to rebuild the encoder (``encoder.export``: a
  family name + plain keyword arguments);
* ``model.safetensors``: the whole head's state dict (backbone included).

:func:`load_trained_head` accepts the run folder or the model folder, and refuses a folder of
the wrong kind with a message that says what it holds. Folders written before the one
format (``head.yaml`` + ``model.safetensors``) still load.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpath.errors import ModelError, WeightsError
from mmpath.io._atomic import atomic_path, interrupted_hint, recover
from mmpath.models.folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_replaceable_model,
    folder_format,
    read_model_folder,
    write_model_folder,
)

__all__ = ["TrainedHead", "save_trained_head", "load_trained_head", "HEAD_FILE", "KINDS"]

HEAD_FILE = CONFIG_NAME  # config.yaml; "head.yaml" in folders written before the one format
WEIGHTS_FILE = WEIGHTS_NAME
FORMAT = "mmpath-head"
KINDS = {
    "seg": "a segmentation (U-Net)",
    "anomaly": "an anomaly (VAE)",
    "mil": "a slide-level (MIL)",
}
_TRAIN_HINT = {
    "seg": "mmpath train seg",
    "anomaly": "mmpath train anomaly",
    "mil": "mmpath train mil",
}


@dataclass
class TrainedHead:
    """A head ready for inference, with what is needed to feed it.

    Attributes
    ----------
    kind
        ``"seg"`` or ``"anomaly"``.
    model
        The ``nn.Module`` (a :class:`UNetHead`, :class:`VAEHead`, or any module with
        ``predict_proba`` / ``anomaly``).
    class_names
        Segmentation classes (index = label value).
    tile_size
        Tile side the model runs on.
    mpp
        µm/px it was trained at (``None``: native resolution).
    mean, std
        Input normalisation (segmentation); the VAE takes ``[0, 1]`` images.
    """

    kind: str
    model: nn.Module
    class_names: tuple[str, ...] = ()
    tile_size: int = 64
    mpp: float | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    name: str = ""
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _head_name(model: nn.Module) -> str:
    from mmpath.models.heads.mil import MILHead
    from mmpath.models.heads.unet import UNetHead
    from mmpath.models.heads.vae import VAEHead

    if isinstance(model, MILHead):
        return model.config.kind
    if isinstance(model, UNetHead):
        return "unet"
    if isinstance(model, VAEHead):
        return "vae"
    raise ModelError(f"cannot save a {type(model).__name__}: only U-Net, VAE and MIL heads save")


def save_trained_head(head: TrainedHead, folder: str | os.PathLike[str]) -> Path:
    """Write ``config.yaml`` and ``model.safetensors`` into ``folder`` (created).

    Example
    -------
    >>> save_trained_head(TrainedHead("seg", unet, ("bg", "tumour"), 64), "runs/seg1/model")
    """
    check_replaceable_model(folder, FORMAT, "trained head")
    with atomic_path(folder) as tmp:  # a crash never leaves new weights with an old config
        tmp.mkdir()
        _write_head(head, tmp)
    return Path(folder)


def _write_head(head: TrainedHead, folder: Path) -> None:
    model = head.model
    name = _head_name(model)
    encoder_spec = None
    backbone = (
        getattr(model, "encoder", None) if name == "unet" else getattr(model, "backbone", None)
    )
    if backbone is not None:
        try:
            encoder_spec = backbone.export(folder, "encoder")
        except (ModelError, AttributeError) as err:
            raise ModelError(
                f"cannot save the head: its encoder cannot be rebuilt ({err})"
            ) from None
    meta = {
        "kind": head.kind,
        "head": name,
        "config": _plain(asdict(model.config)),
        "class_names": list(head.class_names),
        "tile_size": int(head.tile_size),
        "mpp": head.mpp,
        "mean": list(head.mean),
        "std": list(head.std),
        "encoder": encoder_spec,
        "extra": _plain(head.extra),
    }
    write_model_folder(folder, FORMAT, meta, model.state_dict())


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _find_folder(path: Path, kind: str) -> Path:
    recover(path)  # a save killed between its two renames
    if not path.exists():
        raise ModelError(f"model folder {str(path)!r} does not exist" + interrupted_hint(path))
    found = {cand: folder_format(cand) for cand in (path, path / "model")}
    for cand, fmt in found.items():
        if fmt == FORMAT:
            return cand
    what = "nothing mmpath can load"
    for cand, fmt in found.items():
        foreign = fmt is None and (cand / CONFIG_NAME).is_file()  # e.g. a hub/encoder config
        if fmt == "mmpath-encoder" or foreign or (cand / "encoder.yaml").is_file():
            what = "an encoder (no head)"
            break
        if fmt is not None:
            what = {"mmpath-expression": "an expression model"}.get(fmt, fmt)
            break
    raise ModelError(
        f"{str(path)!r} is not {KINDS[kind]} model folder (it holds {what}); pass the "
        f"folder written by `{_TRAIN_HINT[kind]}` (its run folder or <run>/model)"
    )


def load_trained_head(
    path: str | os.PathLike[str], *, kind: str, device: str | torch.device = "cpu"
) -> TrainedHead:
    """Load a head trained by ``mmpath train seg|anomaly`` (run folder or model folder).

    Raises :class:`~mmpath.errors.ModelError` when the folder holds another kind of model.

    Example
    -------
    >>> head = load_trained_head("runs/seg1", kind="seg")
    """
    from mmpath.models.heads.mil import MIL_HEADS, MILConfig, MILHead
    from mmpath.models.heads.unet import UNetConfig, UNetHead
    from mmpath.models.heads.vae import VAEConfig, VAEHead

    if kind not in KINDS:
        raise ModelError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    folder = _find_folder(Path(path), kind)
    try:
        stored = read_model_folder(folder, FORMAT)
    except WeightsError as err:
        raise ModelError(str(err)) from None
    meta = stored.config
    found = meta.get("kind")
    if found != kind:
        held = KINDS.get(found, repr(found))
        raise ModelError(
            f"{str(path)!r} holds {held} model, not {KINDS[kind]} model; pass a folder "
            f"written by `{_TRAIN_HINT[kind]}`"
        )
    encoder = None
    if meta.get("encoder"):
        from mmpath.models.local_dir import create_from_config

        spec = meta["encoder"]
        kwargs = {
            k: (str(folder / v[2:]) if isinstance(v, str) and v.startswith("./") else v)
            for k, v in spec["kwargs"].items()
        }
        encoder = create_from_config(
            spec["family"], kwargs, folder / ("head.yaml" if stored.legacy else CONFIG_NAME)
        )
    cfg = meta.get("config") or {}
    if meta.get("head") == "unet":
        if "indices" in cfg and isinstance(cfg["indices"], list):
            cfg["indices"] = tuple(cfg["indices"])
        model = UNetHead(encoder, UNetConfig(**cfg), input_size=int(meta["tile_size"]))
    elif meta.get("head") == "vae":
        model = VAEHead(VAEConfig(**cfg), backbone=encoder)
    elif meta.get("head") in MIL_HEADS:
        model = MILHead(MILConfig(**cfg))
    else:
        raise ModelError(f"{str(folder)!r}: unknown head {meta.get('head')!r}")
    weights = stored.weights
    state = stored.tensors("pt")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{str(weights)!r} does not match the head ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[:3]})"
        )
    model.eval().to(device)
    return TrainedHead(
        kind=kind,
        model=model,
        class_names=tuple(meta.get("class_names") or ()),
        tile_size=int(meta["tile_size"]),
        mpp=meta.get("mpp"),
        mean=tuple(meta.get("mean") or (0.0, 0.0, 0.0)),
        std=tuple(meta.get("std") or (1.0, 1.0, 1.0)),
        name=folder.parent.name if folder.name == "model" else folder.name,
        path=str(folder),
        extra=meta.get("extra") or {},
    )
