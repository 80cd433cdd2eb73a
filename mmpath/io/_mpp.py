"""The one plausibility rule for microns per pixel, used by every step and command.

A slide's level-0 resolution comes from a scanner (0.1-2 µm/px: 40x is ~0.25, 20x ~0.5,
10x ~1) or from an exported image (a PNG of a slide region, a downsampled thumbnail). Beyond
:data:`MPP_RANGE` the number is not a resolution at all: a screen dpi read as µm (72 dpi is
352.8 µm/px), a unit mix-up (896 µm/px from a tag in the wrong unit), or a typo. So:

* a metadata mpp outside the range is **ignored** with one warning, and the slide is treated
  as having no mpp (steps that need one then refuse, saying how to give it);
* an mpp the user gives (``mpp=`` / ``--slide-mpp``, a tile ``mpp=`` / ``--mpp``, a mask
  ``mask_mpp=`` / ``--mask-mpp``...) outside the range is an error;
* an mpp that disagrees with the one estimated from the image by more than
  :data:`DISAGREE_FACTOR` is reported (``mmpath info``, tiling and embedding warn).

Messages name the argument the way the user typed it: ``mpp=`` from Python, ``--slide-mpp``
from the CLI (:func:`mmpath._settings.spell`).
"""

from __future__ import annotations

import logging
import math

from mmpath._settings import spell
from mmpath.errors import SlideError

log = logging.getLogger("mmpath.io")

__all__ = ["MPP_RANGE", "DISAGREE_FACTOR", "check_mpp", "plausible_metadata_mpp", "disagreement"]

# Level-0 µm/px that any microscope image of tissue can have: 0.05 (beyond 100x oil) to 20
# (a 0.5x overview). A tile or mask may be coarser than its slide: up to 64x the upper bound.
MPP_RANGE = (0.05, 20.0)
_TARGET_MAX = MPP_RANGE[1] * 64
# Metadata and image estimate further apart than this are reported.
DISAGREE_FACTOR = 1.5
_WARNED: set[tuple[str, float]] = set()


def check_mpp(
    value,
    *,
    what: str,
    api: str = "mpp=",
    cli: str | None = "--slide-mpp",
    target: bool = False,
) -> float | None:
    """``value`` as a float when it is a plausible mpp, ``None`` for ``None``; else one error.

    Parameters
    ----------
    value
        The mpp given by the user (µm/px).
    what
        What it belongs to, e.g. ``"slide 'CMU-1'"``.
    api, cli
        The argument's Python spelling (``"mpp="``) and CLI flag (``"--slide-mpp"``; ``None``
        when the CLI has none): the message names the one the user typed.
    target
        A requested tile/mask resolution rather than a slide's level 0 (may be up to 64x
        coarser than :data:`MPP_RANGE` allows for a slide).

    Returns
    -------
    The mpp, or ``None``.
    """
    if value is None:
        return None
    name = spell(api, cli).rstrip("=")
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise SlideError(f"{what}: {name} must be a number in µm/px, got {value!r}") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise SlideError(f"{what}: {name} must be > 0 µm/px, got {value}")
    hi = _TARGET_MAX if target else MPP_RANGE[1]
    if not MPP_RANGE[0] <= mpp <= hi:
        raise SlideError(
            f"{what}: {name} {mpp:g} µm/px is not a plausible "
            f"{'tile resolution' if target else 'slide resolution'} (expected "
            f"{MPP_RANGE[0]:g}-{hi:g}; scanners give 0.1-2, e.g. 0.5 at 20x); check the value"
        )
    return mpp


def plausible_metadata_mpp(found: float | None, what: str) -> float | None:
    """A metadata mpp, or ``None`` (with one warning) when it is outside :data:`MPP_RANGE`."""
    if found is None:
        return None
    if not MPP_RANGE[0] <= found <= MPP_RANGE[1]:
        if (what, found) in _WARNED:  # a file opened by two readers warns once
            return None
        _WARNED.add((what, found))
        log.warning(
            "%s: ignoring implausible mpp %.4g µm/px in the metadata (expected %g-%g); "
            "treated as unknown: give it with %s",
            what,
            found,
            *MPP_RANGE,
            spell("mpp=", "--slide-mpp (or --estimate-mpp)"),
        )
        return None
    return float(found)


def disagreement(a: float | None, b: float | None) -> float | None:
    """``max(a, b) / min(a, b)``, or ``None`` when either is unknown."""
    if not a or not b:
        return None
    return max(a, b) / min(a, b)
