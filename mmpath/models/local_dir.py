"""Our own encoder folder (``local-dir:``): the one model-folder format
(:mod:`mmpath.models.folder`), ``config.yaml`` + ``model.safetensors``.

``config.yaml`` says how to rebuild the module without any network or original folder:

.. code-block:: yaml

    format: mmpath-encoder
    version: 1
    family: pair                # a builder in mmpath.models.registry.families
    kwargs:                     # plain values; "./x" strings are paths inside this folder
      image: {family: timm, kwargs: {arch: vit_tiny_patch16_224, embed_dim: 64, ...}}
      text: {family: hf_text, kwargs: {path: ./text}}   # transformers config + tokenizer
      proj_dim: 128
    info: {name: ..., kind: image-text, embed_dim: 64, data: {...}, ...}
    sha256: <of model.safetensors>

Loading builds the family with random weights, then loads ``model.safetensors`` strictly
(the encoder's own ``state_dict``: towers, projections, ``logit_scale``). Saving is atomic:
a crash leaves no folder at the final name.

A locked pretrained tower may be stored as a reference instead of weights
(``save_encoder(lit, folder, refer={"text": "minilm"})``): its spec is
``{ref: minilm, kwargs: {}}``, ``model.safetensors`` holds every other tensor, and loading
builds that tower with ``create_encoder("minilm")`` (the normal weight resolver; a clear
WeightsError when its weights cannot be found).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmpath.config import from_dict, to_dict
from mmpath.errors import ConfigError, WeightsError
from mmpath.io._atomic import atomic_path, check_replaceable, interrupted_hint, recover
from mmpath.models.base import Encoder, EncoderInfo
from mmpath.models.folder import CONFIG_NAME, WEIGHTS_NAME, read_model_folder, write_model_folder

log = logging.getLogger(__name__)

__all__ = ["save_encoder", "load_encoder", "CONFIG_NAME", "WEIGHTS_NAME"]

FORMAT = "mmpath-encoder"


def _ref_prefixes(encoder: Encoder) -> tuple[str, ...]:
    return tuple(f"{tower}." for tower in getattr(encoder, "refs", {}) or {})


def _check_reference(encoder: Encoder, tower: str, entry: str) -> None:
    """The tower's weights must be exactly the registry entry's, or the reference would lie."""
    from mmpath.models.factory import create_encoder

    own = getattr(encoder, tower).state_dict()
    ref = create_encoder(entry).state_dict()
    same = own.keys() == ref.keys() and all(
        own[k].shape == ref[k].shape and torch.equal(own[k].detach().cpu(), ref[k]) for k in own
    )
    if not same:
        raise WeightsError(
            f"the {tower} tower differs from {entry!r}'s weights (trained or another model); "
            f"save it without refer={{{tower!r}: {entry!r}}}"
        )


def save_encoder(
    encoder: Encoder,
    folder: str | os.PathLike[str],
    *,
    name: str | None = None,
    refer: Mapping[str, str] | None = None,
) -> Path:
    """Write ``encoder`` as a self-contained model folder, atomically.

    Parameters
    ----------
    encoder
        Any encoder built by the registry (including trained pairs and LiT models).
    folder
        Target folder; replaced as a whole if it is an existing model folder (any other
        non-empty folder is refused).
    name
        Registry-style name stored in ``info`` (sets the ``X_<slug>`` key of embeddings);
        defaults to the encoder's current name.
    refer
        Towers of a pair to store as references to registry entries instead of weights,
        e.g. ``{"text": "minilm"}`` for a LiT model; each tower must hold exactly that
        entry's weights (checked). Loading then needs the entry's weights to be found.

    Returns
    -------
    The folder path; load it with ``create_encoder(f"local-dir:{folder}")``.

    Example
    -------
    >>> enc = create_encoder("tiny_clip")  # doctest: +SKIP
    >>> save_encoder(enc, "runs/clip/model", name="demo_clip")  # doctest: +SKIP
    """
    folder = Path(folder)
    check_replaceable(folder, (CONFIG_NAME,), "model")
    info = encoder.info
    if name is not None:
        info = dataclasses.replace(info, name=name, slug=name)
    info = dataclasses.replace(info, weights="", verified=False)
    refer = dict(refer or {})
    if refer and not hasattr(encoder, "refer"):
        raise WeightsError(
            f"{info.name!r} is not a pair of towers; refer= only applies to pair encoders"
        )
    for tower, entry in refer.items():
        _check_reference(encoder, tower, entry)
    before = dict(getattr(encoder, "refs", {}) or {})
    for tower, entry in refer.items():
        encoder.refer(tower, entry)
    try:
        skip = _ref_prefixes(encoder)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            spec = encoder.export(tmp, "")
            state = {
                k: v.detach().to("cpu").contiguous().clone()
                for k, v in encoder.state_dict().items()
                if not k.startswith(skip)
            }
            _write(tmp, spec, state, info)
    finally:
        if refer:
            encoder.refs = before
    log.info("saved encoder %s to %s", info.name, folder)
    return folder


def _write(tmp: Path, spec: dict[str, Any], state: dict[str, Any], info: EncoderInfo) -> None:
    config = {"family": spec["family"], "kwargs": to_dict(spec["kwargs"]), "info": to_dict(info)}
    write_model_folder(tmp, FORMAT, config, state)


def _resolve_paths(value: Any, root: Path) -> Any:
    if isinstance(value, str) and value.startswith("./"):
        return str(root / value[2:])
    if isinstance(value, dict):
        return {k: _resolve_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_paths(v, root) for v in value]
    return value


# Keyword arguments that make a library read a file or the network on its own (timm's
# ``checkpoint_path`` goes to torch.load; ``pretrained*`` downloads). A model folder carries
# its weights in model.safetensors, so a config.yaml naming these is edited or foreign.
_DENIED_KWARGS = frozenset(
    {
        "checkpoint_path",
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_strict",
        "cache_dir",
        "hf_hub_id",
        "url",
    }
)


def _denied(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value if k in _DENIED_KWARGS] + [
            d for v in value.values() for d in _denied(v)
        ]
    if isinstance(value, list):
        return [d for v in value for d in _denied(v)]
    return []


def create_from_config(family: Any, kwargs: Any, where: str | os.PathLike[str]) -> Encoder:
    """``families.create(family, **kwargs)`` for the ``kwargs`` of a model folder's config,
    with one clear :class:`WeightsError` for keys that would load files on their own and for
    arguments the family does not take (an edited or foreign ``config.yaml``)."""
    from mmpath.models.registry import families

    if not isinstance(family, str) or not isinstance(kwargs, dict):
        raise WeightsError(f"{where}: 'family' must be a name and 'kwargs' a mapping")
    bad = _denied(kwargs)
    if bad:
        raise WeightsError(
            f"{where}: kwargs {sorted(set(bad))} are not allowed in a model folder (weights "
            "come from its model.safetensors only); remove them or re-save the model"
        )
    try:
        return families.create(family, **kwargs)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as err:
        text = " ".join(str(err).split())[:200]
        raise WeightsError(
            f"{where}: its kwargs do not build a {family!r} model ({type(err).__name__}: "
            f"{text}); the config.yaml was edited or made by another version"
        ) from None


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.yaml`` of a model folder (raises WeightsError if absent/invalid)."""
    recover(folder)  # a save killed between its two renames
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(
            f"{folder} is not an mmpath model folder (no {CONFIG_NAME}); "
            "save one with mmpath.models.save_encoder" + interrupted_hint(folder)
        )
    # the weights' sha256 is checked when they are read (read_state_dict)
    return read_model_folder(folder, FORMAT, verify=False).config


def load_encoder(folder: str | os.PathLike[str], *, device: Any = None) -> Encoder:
    """Rebuild an encoder saved by :func:`save_encoder` (same as ``local-dir:<folder>``).

    Example
    -------
    >>> enc = load_encoder("runs/clip/model")  # doctest: +SKIP
    """
    from mmpath.models.weights import load_strict, read_state_dict

    root = Path(folder).expanduser().resolve()
    config = read_config(root)
    kwargs = _resolve_paths(config.get("kwargs") or {}, root)
    meta = device is not None and torch.device(device).type == "meta"
    where = CONFIG_NAME
    if meta:
        with torch.device("meta"):
            enc = create_from_config(config.get("family"), kwargs, where)
    else:
        try:
            enc = create_from_config(config.get("family"), kwargs, where)
        except WeightsError as err:
            raise WeightsError(f"model folder {root}: {err}") from None
    try:
        info = from_dict(EncoderInfo, config["info"])
    except (ConfigError, KeyError) as err:
        raise WeightsError(f"{root / CONFIG_NAME}: invalid info ({err})") from None
    if not meta:
        state = read_state_dict(root / WEIGHTS_NAME, sha256=config.get("sha256"))
        skip = _ref_prefixes(enc)
        if skip:  # referenced towers already hold their entry's weights
            own = {k: v for k, v in enc.state_dict().items() if k.startswith(skip)}
            state = {**{k: v for k, v in state.items() if not k.startswith(skip)}, **own}
        load_strict(enc, state, name=info.name)
    enc.info = dataclasses.replace(info, weights=f"local-dir:{root}")
    return enc.eval()
