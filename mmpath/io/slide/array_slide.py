"""In-memory images as one-level slides: plain images (PNG, JPEG, single-level TIFF) and tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmpath.errors import SlideError
from mmpath.io import _mpp, _plain
from mmpath.io.slide.base import Slide, rgba_to_rgb

__all__ = ["ArraySlide"]


class ArraySlide(Slide):
    """An in-memory image as a one-level slide.

    Parameters
    ----------
    image
        ``(h, w, 3)`` RGB or ``(h, w, 4)`` RGBA array, or ``(h, w)`` greyscale: ``uint8``;
        ``uint16`` (scaled to 8 bits over its full range); or floats in 0..1 or 0..255.
    mpp
        Microns per pixel, if known.
    slide_id
        Identifier used in tile tables.
    path
        File the array came from (lets tile tables reopen it).

    Example
    -------
    >>> slide = ArraySlide(np.full((512, 512, 3), 255, np.uint8), mpp=0.5)
    """

    backend = "array"

    def __init__(
        self,
        image: np.ndarray,
        *,
        mpp: float | None = None,
        slide_id: str = "array",
        path: str | os.PathLike[str] | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise SlideError(f"ArraySlide needs an (h, w, 3) RGB array, got shape {arr.shape}")
        arr = _plain.to_uint8(arr)  # uint16 scaled over its range, floats in 0..1 by 255
        if arr.shape[2] == 4:
            arr = rgba_to_rgb(arr)
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise SlideError("ArraySlide got an empty image")
        self._img = np.ascontiguousarray(arr)
        self.slide_id = slide_id
        self.path = str(Path(path).resolve()) if path is not None else None
        self.mpp = _mpp.check_mpp(mpp, what=f"slide {slide_id!r}")
        self.mpp_source = "override" if mpp is not None else None
        self.vendor = "array"
        self.properties = dict(properties or {})
        h, w = self._img.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)  # like openslide: outside the image is empty
        H, W = self._img.shape[:2]
        patch = self._img[y : min(y + h, H), x : min(x + w, W)]
        out[: patch.shape[0], : patch.shape[1]] = patch
        return out

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        if self.mpp_source == "override" and self.path is not None:
            prov["mpp_source"] = "override"
        return prov
