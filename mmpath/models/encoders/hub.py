"""Build an encoder from a downloaded model folder by what the folder contains.

Used for ``hf-hub:<org>/<name>`` names without a registry alias, and for any folder:

* ``config.yaml`` of format ``mmpath-encoder`` -> our own format (:mod:`..local_dir`);
* ``open_clip_config.json`` -> open_clip (QuiltNet, CONCH-style folders);
* ``config.json`` with ``"architecture"`` -> timm (UNI, Virchow2, H-optimus-0 folders);
* ``config.json`` with ``model_type`` ``clip`` -> transformers CLIPModel (PLIP);
  ``vit``/``dinov2`` -> transformers image model (Phikon); other types (``bert``...) or a
  sentence-transformers ``modules.json`` -> mean-pooled text tower (MiniLM).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmpath.errors import WeightsError
from mmpath.models.base import DataConfig, Encoder
from mmpath.models.weights import read_state_dict

__all__ = ["create_from_folder", "slugify", "folder_kind"]

VISION_TYPES = ("vit", "dinov2", "dinov2_with_registers", "vit_msn", "deit", "beit")


def slugify(name: str) -> str:
    """obsm-safe slug: lower case, every character outside ``[a-z0-9_.-]`` -> ``_``."""
    return re.sub(r"[^a-z0-9_.-]", "_", name.lower())


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot read {path}: {err}") from None


def folder_kind(folder: Path) -> str:
    """One of mmpath, open_clip, timm, hf_clip, hf_vision or hf_text."""
    if (folder / "config.yaml").is_file():
        return "mmpath"
    if (folder / "open_clip_config.json").is_file():
        return "open_clip"
    if (folder / "config.json").is_file():
        cfg = _json(folder / "config.json")
        if "architecture" in cfg:
            return "timm"
        model_type = cfg.get("model_type", "")
        if model_type == "clip":
            return "hf_clip"
        if model_type in VISION_TYPES:
            return "hf_vision"
        if model_type:
            return "hf_text"
    raise WeightsError(
        f"cannot tell what model {folder} holds: expected config.yaml (mmpath), "
        "open_clip_config.json (open_clip) or config.json (timm / transformers)"
    )


def _timm_from_folder(folder: Path) -> Encoder:
    from mmpath.models.encoders.timm_tower import TimmEncoder

    cfg = _json(folder / "config.json")
    args = dict(cfg.get("model_args", {}))
    args.pop("num_classes", None)
    pre = cfg.get("pretrained_cfg", {})
    enc = TimmEncoder(cfg["architecture"], global_pool=cfg.get("global_pool", "token"), **args)
    size = pre.get("input_size", [3, enc.info.data.input_size])[-1]
    data = DataConfig(
        input_size=int(size),
        mean=tuple(pre.get("mean", enc.info.data.mean)),
        std=tuple(pre.get("std", enc.info.data.std)),
        interpolation=str(pre.get("interpolation", "bicubic")),
        mpp=None,
    )
    enc.info = replace(enc.info, data=data, license=str(pre.get("license", "unknown")))
    enc.load_checkpoint(read_state_dict(folder))
    return enc


def create_from_folder(folder: str | Path, *, name: str | None = None, **kwargs: Any) -> Encoder:
    """Build and load the encoder a downloaded folder holds (see module docstring).

    Example
    -------
    >>> enc = create_from_folder("/models/plip", name="hf-hub:vinid/plip")  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder} is not a model folder")
    kind = folder_kind(folder)
    if kind == "mmpath":
        from mmpath.models.local_dir import load_encoder

        enc = load_encoder(folder)
    elif kind == "open_clip":
        from mmpath.models.encoders.clip_open import OpenClipEncoder

        cfg = _json(folder / "open_clip_config.json")
        enc = OpenClipEncoder(model_cfg=cfg["model_cfg"], preprocess_cfg=cfg.get("preprocess_cfg"))
        enc.load_checkpoint(read_state_dict(folder))
    elif kind == "timm":
        enc = _timm_from_folder(folder)
    else:
        from mmpath.models.encoders import hf

        cls = {"hf_clip": hf.HFClipEncoder, "hf_vision": hf.HFVisionEncoder}.get(
            kind, hf.HFTextEncoder
        )
        enc = cls(folder, **kwargs)
        enc.load_pretrained(folder)
    if name:
        enc.info = replace(enc.info, name=name, slug=slugify(name), source=name)
    enc.info = replace(enc.info, weights=str(folder))
    return enc
