"""How far to trust an encoder's outputs: the one-line caveat of demo and random-weight
models, and class names far from what a model's text side was trained on.

* :func:`caveat` is ``""`` for a model with real weights. A registry entry may declare its
  own (``register_encoder(..., caveat=...)``: the demo models); a model built without loading
  any weights (tiny test entries, ``pretrained=False``, ``timm:<arch>`` without ``weights=``)
  gets the random-weights caveat. ``tl.embed`` and ``tl.zero_shot`` record it in provenance
  and every CLI verb prints it once.
* :func:`vocabulary`: an entry may declare the concept phrases its captions were made of
  (``register_encoder(..., vocabulary=...)``); ``tl.zero_shot`` then warns about class names
  far from them (the measurable rule is in :mod:`mmpath.tl.zeroshot`).
"""

from __future__ import annotations

import logging

from mmpath.errors import ModelError
from mmpath.models.registry import RANDOM_INIT, encoders

log = logging.getLogger(__name__)

__all__ = ["caveat", "vocabulary"]


def _entry_meta(name: str):
    try:
        return encoders.get(name).meta
    except ModelError:  # not a registry entry (hf-hub:, local-dir:, a user's module)
        return None


def caveat(encoder) -> str:
    """The one-line caveat of ``encoder`` (an Encoder or its ``EncoderInfo``), ``""`` if none.

    Example
    -------
    >>> caveat(mm.models.create_encoder("tiny_clip"))  # doctest: +SKIP
    'tiny_clip has random weights (none were loaded): its outputs only exercise the pipeline'
    """
    info = getattr(encoder, "info", encoder)
    meta = _entry_meta(info.name)
    if meta is not None and meta.caveat:
        return meta.caveat
    if info.weights == RANDOM_INIT:
        return (
            f"{info.name} has random weights (none were loaded): its outputs only exercise the "
            "pipeline and mean nothing"
        )
    return ""


def vocabulary(encoder) -> tuple[str, ...]:
    """The concept phrases ``encoder``'s text side was trained on, when its registry entry
    declares them (``()`` otherwise); ``mm.tl.zero_shot`` warns about class names far from
    them (the rule is in :mod:`mmpath.tl.zeroshot`)."""
    meta = _entry_meta(getattr(encoder, "info", encoder).name)
    return tuple(meta.vocabulary) if meta is not None else ()
