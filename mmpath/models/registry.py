"""Encoder and head registries, ``create_encoder`` and ``list_encoders``.

Three registries, all :class:`mmpath._registry.Registry`:

* ``encoders``: named entries (``uni``, ``plip``, ``tiny_vit``...). Each factory builds the
  architecture with random weights, exactly as the model card constructs it; its
  :class:`EntryMeta` says where the real weights come from. :func:`create_encoder` builds,
  then resolves and loads the weights (see :mod:`mmpath.models.weights`).
* ``families``: generic builders (``timm``, ``open_clip``, ``hf_clip``, ``hf_vision``,
  ``hf_text``, ``open_clip_text``, ``pair``) that entries are made of. A saved model folder
  names a family and its plain keyword arguments, so any encoder rebuilds from its folder.
* ``heads``: task heads (filled by the issues that add them).

Names given to :func:`create_encoder` may be an entry or alias, ``timm:<arch>``,
``open_clip:<arch>``, ``hf-hub:<org>/<name>``, ``local-dir:/path``, or an Encoder instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mmpath._registry import Registry
from mmpath.errors import ModelError, WeightsError
from mmpath.models.base import Encoder, EncoderInfo
from mmpath.models.weights import WeightsSpec, read_state_dict, resolve_weights

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"  # EncoderInfo.weights of a model built without loading weights

__all__ = [
    "encoders",
    "heads",
    "families",
    "EntryMeta",
    "register_encoder",
    "create_encoder",
    "list_encoders",
]

encoders: Registry = Registry("encoder")
heads: Registry = Registry("head")
families: Registry = Registry("encoder family")


@dataclass(frozen=True)
class EntryMeta:
    """What a registry entry is, without building it.

    ``weights`` is ``None`` for entries that are random by design (tiny test models);
    ``requires`` names an optional pip package the entry needs (``"conch"`` for CONCH).
    ``caveat`` is the one line every output of the entry carries (demo models);
    ``vocabulary`` the phrases its text side was trained on, when that is known and small
    (see :mod:`mmpath.models.caveats`).
    """

    info: EncoderInfo
    weights: WeightsSpec | None = None
    requires: str | None = None
    install: str = ""
    caveat: str = ""
    vocabulary: tuple[str, ...] = ()


def register_encoder(
    name: str,
    info: EncoderInfo,
    *,
    weights: WeightsSpec | None = None,
    requires: str | None = None,
    install: str = "",
    aliases: tuple[str, ...] = (),
    caveat: str = "",
    vocabulary: tuple[str, ...] = (),
) -> Callable:
    """Decorator registering an encoder factory with its frozen :class:`EncoderInfo`.

    Example
    -------
    >>> @register_encoder("my_vit", EncoderInfo("my_vit", "image", 384))  # doctest: +SKIP
    ... def my_vit(**kw):
    ...     return TimmEncoder("vit_small_patch16_224", info=..., **kw)
    """
    info = replace(info, name=name, slug=info.slug or name)
    meta = EntryMeta(info, weights, requires, install, caveat, tuple(vocabulary))
    return encoders.register(name, meta=meta, aliases=aliases)


def _available(meta: EntryMeta) -> bool:
    from mmpath._weights import requirement_available

    return requirement_available(meta.requires)


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
        :class:`Encoder` (returned as is, moved to ``device``).
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
        return _finish(name, device)
    if not isinstance(name, str) or not name:
        raise ModelError(f"encoder name must be a non-empty string, got {name!r}")
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


def _alias_for_hub(hub_id: str) -> str | None:
    import mmpath.models.encoders  # noqa: F401

    for name in encoders:
        spec = encoders.get(name).meta.weights
        if spec is not None and spec.hub_id == hub_id:
            return name
    return None


def _weights_found(name: str, meta: EntryMeta) -> bool:
    from mmpath._weights import weights_found

    return weights_found(name, meta.weights)


def list_encoders(pattern: str = "*"):
    """A table of the registered encoders (no model is built).

    Columns: name, aliases, kind, dim, proj_dim, input_size, mpp, pooling, license, source,
    available (optional package present), weights (``"verified"``: installed by ``mmpath
    weights install``, checked against the architecture and unchanged since; ``"found"``:
    present but not checked; ``"missing"``; ``"random"`` for test models) and verified (ever
    run on its real weights).

    Example
    -------
    >>> df = list_encoders("tiny*")
    >>> sorted(df["name"])
    ['tiny_clip', 'tiny_text', 'tiny_vit']
    """
    import pandas as pd

    import mmpath.models.encoders  # noqa: F401
    from mmpath._weights import weights_status

    rows = []
    for name in encoders.list(pattern):
        entry = encoders.get(name)
        meta: EntryMeta = entry.meta
        info = meta.info
        found = weights_status(name, meta.weights)  # torch-free (mmpath._weights)
        rows.append(
            {
                "name": name,
                "aliases": ",".join(entry.aliases),
                "kind": info.kind,
                "dim": info.embed_dim,
                "proj_dim": info.proj_dim,
                "input_size": info.data.input_size if info.has_image else None,
                "mpp": info.data.mpp if info.has_image else None,
                "pooling": info.pooling,
                "license": info.license,
                "source": info.source,
                "available": _available(meta),
                "weights": found,
                "verified": info.verified,
            }
        )
    df = pd.DataFrame(rows, columns=None if rows else ["name"])
    for col in ("proj_dim", "input_size"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def _check_no_weights(weights: Any) -> None:
    if weights is not None:
        raise WeightsError("weights= cannot be combined with a local-dir: encoder")
