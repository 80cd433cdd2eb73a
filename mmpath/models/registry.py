"""Encoder and head registries: entries, their metadata and ``list_encoders`` (no torch here).

Three registries, all :class:`mmpath._registry.Registry`:

* ``encoders``: named entries (``uni``, ``plip``, ``tiny_vit``...). Each factory builds the
  architecture with random weights, exactly as the model card constructs it; its
  :class:`EntryMeta` says where the real weights come from.
  :func:`~mmpath.models.factory.create_encoder` builds, then resolves and loads the weights
  (see :mod:`mmpath.models.weights`).
* ``families``: generic builders (``timm``, ``open_clip``, ``hf_clip``, ``hf_vision``,
  ``hf_text``, ``open_clip_text``, ``pair``) that entries are made of. A saved model folder
  names a family and its plain keyword arguments, so any encoder rebuilds from its folder.
* ``heads``: task heads (filled by the issues that add them).

Building lives in :mod:`mmpath.models.factory` (torch): encoder modules import this module to
register themselves, the factory imports it to build, and this module imports neither (the
import circle of the old one-file registry is gone). ``create_encoder`` and ``check_device``
stay importable from here (forwarded to the factory).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mmpath._registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from mmpath.models.base import EncoderInfo
    from mmpath.models.weights import WeightsSpec

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"  # EncoderInfo.weights of a model built without loading weights

__all__ = [
    "encoders",
    "heads",
    "families",
    "EntryMeta",
    "register_encoder",
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


def __getattr__(name: str) -> Any:
    # The factory's names, importable from here as before the split (lazily: the factory
    # imports this module).
    if name in ("create_encoder", "check_device"):
        return getattr(importlib.import_module("mmpath.models.factory"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
