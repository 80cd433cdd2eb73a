"""The :class:`Slide` interface every backend implements, and the helpers they share.

Every backend returns RGB ``uint8`` arrays of shape ``(h, w, 3)``; transparent pixels
(outside the scanned area) are composited onto white by :func:`rgba_to_rgb`, which is what
the glass looks like.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mmpath.errors import SlideError
from mmpath.io import _mpp, _plain

__all__ = ["Slide", "rgba_to_rgb", "metadata_mpp", "MPP_PLAUSIBLE"]

MPP_PLAUSIBLE = _mpp.MPP_RANGE  # the one rule: mmpath/io/_mpp.py


class Slide:
    """A whole-slide image (or plain image) read as RGB ``uint8``.

    Attributes
    ----------
    slide_id
        Identifier used in tile tables (defaults to the file stem).
    path
        Absolute path of the file, or ``None`` for in-memory images.
    mpp
        Level-0 microns per pixel (user override first, then metadata), or ``None``.
    mpp_source
        ``"override"``, ``"metadata"``, ``"estimate"`` (from its nuclei) or ``None``.
    """

    backend = "abstract"
    slide_id: str
    path: str | None
    mpp: float | None
    mpp_source: str | None
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: Mapping[str, str]
    mpp_estimate: dict[str, Any] | None = None  # set by mm.pp.estimate_mpp's callers

    # -- geometry -------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        """Microns per pixel at ``level`` (requires mpp)."""
        return self.require_mpp() * self.level_downsamples[level]

    def require_mpp(self) -> float:
        """The level-0 mpp, or a :class:`SlideError` saying how to provide it."""
        if self.mpp is None:
            from mmpath._settings import spell

            raise SlideError(
                f"slide {self.slide_id!r} has no mpp metadata (or only an implausible one); give "
                "its µm per pixel with "
                + spell(
                    "mpp= (e.g. open_slide(path, mpp=0.5)), or estimate it with "
                    "mm.pp.estimate_mpp, or tile by level= instead of mpp=",
                    "--slide-mpp (e.g. --slide-mpp 0.5), or --estimate-mpp",
                )
            )
        return self.mpp

    def best_level_for_downsample(self, downsample: float) -> int:
        """Deepest level whose downsample does not exceed ``downsample`` (+0.1% slack)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.001:
                best = i
        return best

    def _check_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> None:
        if not 0 <= level < self.level_count:
            raise SlideError(
                f"slide {self.slide_id!r}: level {level} does not exist "
                f"(levels 0..{self.level_count - 1})"
            )
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise SlideError(f"slide {self.slide_id!r}: region size must be > 0, got {w}x{h}")
        ds = self.level_downsamples[level]
        W, H = self.dimensions
        # A level's pixel covers `ds` level-0 pixels, so allow one of them of rounding slack.
        if x < 0 or y < 0 or x + w * ds > W + ds or y + h * ds > H + ds:
            raise SlideError(
                f"slide {self.slide_id!r}: region x={x}, y={y}, {w}x{h} at level {level} lies "
                f"outside the slide ({W}x{H} at level 0)"
            )

    # -- pixels -----------------------------------------------------------------------------
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size=(w, h)`` pixels at ``level`` whose top-left is ``location`` (level 0).

        Returns
        -------
        ``uint8`` array of shape ``(h, w, 3)``.
        """
        img = self._read_view(location, level, size)
        return img if img.flags.writeable else img.copy()

    def _read_view(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """:meth:`read_region`, but the array may be read-only (for callers that copy it)."""
        self._check_region(location, level, size)
        return self._read(int(location[0]), int(location[1]), level, int(size[0]), int(size[1]))

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def get_thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """RGB thumbnail whose longer side is at most ``max_size`` pixels.

        Reads from the deepest level that is still at least as large as the thumbnail, in
        strips, so memory stays bounded on single-level slides.
        """
        from mmpath.io._lowres import read_downsampled

        W, H = self.dimensions
        ds = max(W, H) / max_size if max(W, H) > max_size else 1.0
        return read_downsampled(self, ds)

    def associated_image_names(self) -> list[str]:
        """Names of associated images (``thumbnail``, ``label``, ``macro``...)."""
        return []

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image as RGB ``uint8``."""
        raise SlideError(
            f"slide {self.slide_id!r} has no associated image {name!r}; "
            f"available: {self.associated_image_names() or 'none'}"
        )

    def provenance(self) -> dict[str, Any]:
        """JSON-able description stored in ``uns["mmpath"]["slides"][slide_id]``."""
        return {
            "path": self.path,
            "backend": self.backend,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "dims": list(self.dimensions),
            "vendor": self.vendor,
            "level_count": self.level_count,
            "level_downsamples": [float(d) for d in self.level_downsamples],
            **({"mpp_estimate": self.mpp_estimate} if self.mpp_estimate else {}),
        }

    def close(self) -> None:
        """Release file handles (the slide can still be reopened from its path)."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        W, H = self.dimensions
        mpp = f"{self.mpp:.4g} µm/px" if self.mpp else "mpp unknown"
        return (
            f"<{type(self).__name__} {self.slide_id!r} {W}x{H}, {self.level_count} level(s), "
            f"{mpp}, {self.vendor}>"
        )


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """An ``(h, w, 4)`` RGBA ``uint8`` array as RGB, composited onto white (the glass).

    Every backend returns RGB through this: transparent pixels (outside the scanned area, a
    missing tile) become white, half-transparent ones a blend; a fully opaque array just
    drops its alpha.
    """
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def metadata_mpp(props: Mapping[str, str]) -> float | None:
    """Level-0 µm/px from slide properties, or ``None``.

    openslide's normalised ``openslide.mpp-x`` (or ``aperio.MPP``) first, then an OME-XML
    description, then the TIFF resolution tags (``tiff.XResolution`` in its unit). Not yet
    checked for plausibility (:func:`mmpath.io._mpp.plausible_metadata_mpp` does that).
    """
    for key in ("openslide.mpp-x", "aperio.MPP"):
        if key in props:
            try:
                value = float(props[key])
            except ValueError:
                continue
            if value > 0:
                return value
    found = _plain.ome_mpp(props.get("tiff.ImageDescription"))
    if found is not None:
        return found
    res, unit = props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit", "")
    if res:
        try:
            r = float(res)
        except ValueError:
            return None
        per_um = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3}.get(unit.lower())
        if per_um and r > 0:
            return per_um / r
    return None
