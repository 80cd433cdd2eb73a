"""Slides read through openslide: every format it supports (Aperio, Hamamatsu, MIRAX, Leica,
Philips, Ventana, DICOM, generic tiled TIFF...).

An openslide handle that fails once stays failed for every later read (an openslide
property), so :class:`OpenSlideSlide` reopens its handle after any read error: one corrupt
tile never poisons the rest of the slide.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from mmpath.errors import SlideError, TileReadError
from mmpath.io import _mpp
from mmpath.io.slide.base import Slide, metadata_mpp, rgba_to_rgb

__all__ = ["OpenSlideSlide"]


def _pil_rgba_to_rgb(img) -> np.ndarray:
    """openslide's RGBA PIL image as an RGB array (read-only when fully opaque).

    The per-tile cost of every openslide read, so it stays bare: PIL packs the alpha band
    (one byte per pixel) and a ``bytes`` comparison with an all-255 string says "opaque"
    (a memcmp); PIL then packs RGBA straight to RGB bytes, which numpy views without a copy.
    That is ~5x cheaper than ``convert("RGB")`` + ``np.asarray`` (PIL keeps RGB as 4 bytes a
    pixel, so that route converts, then packs). Regions with transparency (outside the
    scanned area, a missing tile) take the compositing path onto white.
    """
    w, h = img.size
    if img.tobytes("raw", "A") == _opaque(w * h):
        return np.frombuffer(img.tobytes("raw", "RGB"), np.uint8).reshape(h, w, 3)
    return rgba_to_rgb(np.asarray(img))


@functools.lru_cache(maxsize=8)
def _opaque(n: int) -> bytes:
    """``n`` bytes of 255: an opaque alpha band (cached per tile size)."""
    return b"\xff" * n


class OpenSlideSlide(Slide):
    """A slide read through openslide (every format openslide supports, DICOM included).

    Parameters
    ----------
    path
        Slide file (for DICOM, any file of the series or the folder holding it).
    mpp
        Level-0 µm/px; overrides (and is recorded instead of) the metadata.
    slide_id
        Defaults to the file stem.
    """

    backend = "openslide"

    def __init__(
        self, path: str | os.PathLike[str], *, mpp: float | None = None, slide_id: str | None = None
    ) -> None:
        import openslide

        self.path = str(Path(path).resolve())
        self._open_path = _dicom_entry(Path(self.path)) if Path(self.path).is_dir() else self.path
        self.slide_id = slide_id or Path(self.path).stem
        try:
            self._osr = openslide.OpenSlide(self._open_path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(
                f"cannot read {self.path!r}: not a format openslide supports "
                "(convert it to a tiled pyramidal TIFF, or open plain images with ArraySlide)"
            ) from None
        except (openslide.OpenSlideError, OSError) as err:
            raise SlideError(
                f"cannot read {self.path!r}: the file looks corrupt or truncated ({err}); "
                "re-export or re-copy it"
            ) from None
        self.properties = dict(self._osr.properties)
        self.vendor = self.properties.get("openslide.vendor", "unknown")
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        what = f"slide {self.slide_id!r}"
        if mpp is not None:
            self.mpp, self.mpp_source = _mpp.check_mpp(mpp, what=what), "override"
        else:
            found = _mpp.plausible_metadata_mpp(metadata_mpp(self.properties), what)
            self.mpp, self.mpp_source = found, ("metadata" if found is not None else None)

    def _handle(self):
        if self._osr is None:
            import openslide

            self._osr = openslide.OpenSlide(self._open_path)
        return self._osr

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        import openslide

        try:
            img = self._handle().read_region((x, y), level, (w, h))
        except openslide.OpenSlideError as err:
            # openslide handles stay failed after one error: reopen for the next read.
            self._reopen()
            raise TileReadError(
                f"slide {self.slide_id!r}: could not read region x={x}, y={y}, {w}x{h} at "
                f"level {level} ({err}); the file is damaged there"
            ) from None
        return _pil_rgba_to_rgb(img)

    def _reopen(self) -> None:
        try:
            if self._osr is not None:
                self._osr.close()
        except Exception:  # noqa: BLE001 - closing a failed handle may itself fail
            pass
        self._osr = None

    def associated_image_names(self) -> list[str]:
        return sorted(self._handle().associated_images)

    def associated_image(self, name: str) -> np.ndarray:
        images = self._handle().associated_images
        if name not in images:
            return super().associated_image(name)
        return rgba_to_rgb(np.asarray(images[name].convert("RGBA")))

    def close(self) -> None:
        self._reopen()

    def __getstate__(self) -> dict[str, Any]:
        # Handles are per process: a pickled slide reopens lazily in the worker.
        state = dict(self.__dict__)
        state["_osr"] = None
        return state


def _dicom_entry(folder: Path) -> str:
    dcm = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm")
    if not dcm:
        raise SlideError(
            f"{str(folder)!r} is a directory, not a slide file; pass the slide file itself "
            "(a directory is only accepted when it holds a DICOM series)"
        )
    return str(dcm[0])
