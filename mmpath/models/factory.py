"""The encoder factory: :func:`create_encoder` builds a registered (or named) encoder and
loads its weights; :func:`check_device` vets a device string.

Entries, their metadata and :func:`~mmpath.models.registry.list_encoders` live in
:mod:`mmpath.models.registry` (no torch there); encoder modules register themselves into it,
and this module builds from it, so the arrows run one way: ``encoders/* -> registry`` and
``factory -> registry`` (+ ``encoders`` lazily, to fill it).

Names given to :func:`create_encoder` may be an entry or alias, ``timm:<arch>``,
``open_clip:<arch>``, ``hf-hub:<org>/<name>``, ``local-dir:/path``, or an Encoder instance.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mmpath.errors import ModelError, WeightsError
from mmpath.models.base import Encoder
from mmpath.models.registry import (
    RANDOM_INIT,
    EntryMeta,
    _alias_for_hub,
    _available,
    encoders,
    families,
)
from mmpath.models.weights import WeightsSpec, read_state_dict, resolve_weights

__all__ = ["create_encoder", "check_device"]


@contextlib.contextmanager
def _build_device(device: str | torch.device | None):
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            yield
    else:
        yield


def check_device(device: Any) -> Any:
    """``device`` unchanged when it names a device this machine has; else a one-line
    :class:`ModelError` (``cuda`` without a GPU, ``cuda:3`` on a 1-GPU machine, ``"gpu"``)."""
    if device is None or isinstance(device, torch.device) and device.type in ("cpu", "meta"):
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(
            f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ModelError(f"device {str(device)!r} asked but no CUDA GPU is available; use cpu")
        if dev.index is not None and dev.index >= n:
            raise ModelError(f"device {str(device)!r} asked but this machine has {n} GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {str(device)!r} asked but MPS is not available; use cpu")
    return device


def _finish(enc: Encoder, device: Any) -> Encoder:
    if not isinstance(enc, Encoder):
        raise ModelError(f"factory returned {type(enc).__name__}, not an Encoder")
    enc.eval()
    if device is not None and torch.device(device).type != "meta":
        enc.to(device)
    return enc


def _load_weights(enc: Encoder, location: Path, sha256: str | None = None) -> None:
    loader = getattr(enc, "load_pretrained", None)
    if loader is not None:  # families that also read tokenizers/configs from the folder
        loader(location, sha256=sha256)
    else:
        enc.load_checkpoint(read_state_dict(location, sha256=sha256))
    enc.info = replace(enc.info, weights=str(location))


def create_encoder(
    name: str | Encoder,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = True,
    **kwargs: Any,
) -> Encoder:
    """Build an encoder by name and load its weights, offline-aware.

    Parameters
    ----------
    name
        An entry or alias (``"uni"``, ``"tiny_clip"``), ``"timm:<arch>"``,
        ``"open_clip:<arch>"``, ``"hf-hub:<org>/<name>"``, ``"local-dir:/path"``, or an
        :class:`Encoder` (returned as is, in eval mode, moved to ``device``; ``weights=``
        is refused for an instance). Every encoder argument of the library (``mm.tl.embed``,
        ``zero_shot``, ``index`` queries, the CLI) resolves through here.
    weights
        A weights file or model folder; wins over every other place (see
        :mod:`mmpath.models.weights`). For ``timm:``/``open_clip:`` names, weights are loaded
        only when given (random init otherwise).
    device
        Where to put the model; ``"meta"`` builds shapes only (no weights are read).
    pretrained
        ``False`` builds a real entry with random weights (tests, training from scratch).
    **kwargs
        Passed to the entry's factory.

    Returns
    -------
    The encoder, in eval mode.

    Example
    -------
    >>> enc = create_encoder("tiny_vit")
    >>> enc.info.embed_dim
    64
    """
    device = check_device(device)
    if isinstance(name, Encoder):
        if weights is not None:
            raise ModelError("weights= applies to encoder names; load the instance with them")
        return _finish(name, device)
    if not isinstance(name, str) or not name:
        raise ModelError(
            f"encoder must be a registry name or an Encoder, got {type(name).__name__} {name!r}"
        )
    import mmpath.models.encoders  # noqa: F401 - registers the entries

    meta_only = device is not None and torch.device(device).type == "meta"
    if name.startswith("local-dir:"):
        from mmpath.models.local_dir import load_encoder

        _check_no_weights(weights)
        return _finish(load_encoder(name[len("local-dir:") :], device=device), device)
    if name.startswith("hf-hub:"):
        from mmpath.models.encoders.hub import create_from_folder

        hub_id = name[len("hf-hub:") :]
        alias = _alias_for_hub(hub_id)
        if alias is not None and not kwargs:
            return create_encoder(alias, weights=weights, device=device, pretrained=pretrained)
        spec = WeightsSpec(hub_id=hub_id)
        folder = resolve_weights(hub_id.replace("/", "--"), spec, weights)
        with _build_device(device):
            enc = create_from_folder(folder, name=name, **kwargs)
        return _finish(enc, device)
    for prefix, family in (("timm:", "timm"), ("open_clip:", "open_clip")):
        if name.startswith(prefix):
            with _build_device(device):
                enc = families.create(family, arch=name[len(prefix) :], **kwargs)
            if weights is not None and not meta_only:
                _load_weights(enc, resolve_weights(name, None, weights))
            elif not meta_only:
                enc.info = replace(enc.info, weights=RANDOM_INIT)
            return _finish(enc, device)
    entry = encoders.get(name)
    meta: EntryMeta = entry.meta
    if not _available(meta):
        raise ModelError(
            f"encoder {entry.name!r} needs the optional package {meta.requires!r}, which is not "
            f"installed: {meta.install or f'pip install {meta.requires}'}"
        )
    location = None
    if not meta_only and pretrained and (meta.weights is not None or weights is not None):
        # resolve before building: a missing giant model fails in milliseconds
        location = resolve_weights(entry.name, meta.weights, weights)
    with _build_device(device):
        enc = entry.factory(**kwargs)
    enc.info = replace(
        meta.info, embed_dim=enc.info.embed_dim, proj_dim=enc.info.proj_dim, data=enc.info.data
    )
    if location is not None:
        sha = meta.weights.sha256 if meta.weights is not None and weights is None else None
        _load_weights(enc, location, sha)
    elif not meta_only:
        enc.info = replace(enc.info, weights=RANDOM_INIT)  # said by models.caveats.caveat
    return _finish(enc, device)


def _check_no_weights(weights: Any) -> None:
    if weights is not None:
        raise WeightsError("weights= cannot be combined with a local-dir: encoder")
