"""Slides: one interface over openslide and in-memory arrays.

:class:`Slide` is what every step that reads pixels takes. Two backends implement it:

* :class:`OpenSlideSlide` for every format openslide reads (Aperio, Hamamatsu, MIRAX, Leica,
  Philips, Ventana, DICOM, generic tiled TIFF...);
* :class:`ArraySlide` for plain images (PNG, JPEG, single-level TIFF) and tests;
* ``TiffSlide`` (``mmpath/io/_tiff.py``) for the TIFFs openslide declines or misreads.

Both always return RGB ``uint8`` arrays of shape ``(h, w, 3)``. Transparent pixels (outside
the scanned area) are composited onto white, which is what the glass looks like.

An openslide handle that fails once stays failed for every later read (an openslide
property), so :class:`OpenSlideSlide` reopens its handle after any read error: one corrupt
tile never poisons the rest of the slide.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmpath.errors import SlideError, TileReadError
from mmpath.io import _mpp, _plain

log = logging.getLogger(__name__)

__all__ = ["Slide", "OpenSlideSlide", "ArraySlide", "open_slide"]

MPP_PLAUSIBLE = _mpp.MPP_RANGE  # the one rule: mmpath/io/_mpp.py


def _check_mpp(mpp: float | None, what: str) -> float | None:
    return _mpp.check_mpp(mpp, what=what)


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


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA onto white; fast path when everything is opaque."""
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


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
    return _rgba_to_rgb(np.asarray(img))


@functools.lru_cache(maxsize=8)
def _opaque(n: int) -> bytes:
    """``n`` bytes of 255: an opaque alpha band (cached per tile size)."""
    return b"\xff" * n


def _metadata_mpp(props: Mapping[str, str]) -> float | None:
    """mpp from openslide's normalised property, else from TIFF resolution tags."""
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
            self.mpp, self.mpp_source = _check_mpp(mpp, what), "override"
        else:
            found = _mpp.plausible_metadata_mpp(_metadata_mpp(self.properties), what)
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
        return _rgba_to_rgb(np.asarray(images[name].convert("RGBA")))

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
            arr = _rgba_to_rgb(arr)
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise SlideError("ArraySlide got an empty image")
        self._img = np.ascontiguousarray(arr)
        self.slide_id = slide_id
        self.path = str(Path(path).resolve()) if path is not None else None
        self.mpp = _check_mpp(mpp, f"slide {slide_id!r}")
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


def open_slide(
    path: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    slide_id: str | None = None,
    backend: str | None = None,
) -> Slide:
    """Open a whole-slide image or plain image.

    Parameters
    ----------
    path
        Any format openslide reads (``.svs``, ``.ndpi``, ``.mrxs``, ``.tif``, DICOM...), or a
        plain image (``.png``, ``.jpg``, single-level ``.tif``) which opens as an
        :class:`ArraySlide`.
    mpp
        Level-0 µm/px; overrides the metadata (needed when the file has none).
    slide_id
        Identifier in tile tables; defaults to the file stem.
    backend
        ``"openslide"`` or ``"tifffile"`` forces that reader. By default generic TIFF and
        Aperio SVS files are read by direct tile decode (tifffile + imagecodecs, 2-3x faster,
        the same pixels) unless an open-time check finds something it does not handle
        (``mmpath/io/_fast.py``); openslide reads every other format, and tifffile the TIFFs
        openslide declines. The choice is logged and tables record it.

    Returns
    -------
    A :class:`Slide`.

    Example
    -------
    >>> slide = mm.io.open_slide("CMU-1.svs")
    >>> slide.mpp, slide.dimensions
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise SlideError(f"slide file {str(p)!r} does not exist; check the path")
    if p.is_dir():
        return OpenSlideSlide(p, mpp=mpp, slide_id=slide_id)
    try:
        st = p.stat()
    except OSError as err:
        raise SlideError(f"cannot access {str(p)!r}: {err}") from None
    if st.st_size == 0:
        raise SlideError(f"slide file {str(p)!r} is empty (0 bytes); re-copy it")
    sid = slide_id or _stem(p)
    suffix = p.suffix.lower()
    if suffix in _plain.PLAIN_IMAGE_EXT:
        return ArraySlide(_plain.read_plain_image(p), mpp=mpp, slide_id=sid, path=p)
    if backend not in (None, "openslide", "tifffile"):
        raise SlideError(f"backend must be 'openslide' or 'tifffile', got {backend!r}")
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if backend is None and _READERS.get(key) == "openslide":
        log.debug("%s: reading with openslide (decided at its first open in this process)", p)
        return OpenSlideSlide(p, mpp=mpp, slide_id=sid)
    slide = _open_file(p, suffix, mpp=mpp, slide_id=sid, backend=backend)
    if backend is None and slide.backend == "openslide":
        if len(_READERS) >= 4096:
            _READERS.clear()
        _READERS[key] = "openslide"
    return slide


# Files the default policy gave to openslide, by (path, size, mtime, inode): a reopen (every
# DataLoader worker, every cohort read) skips format detection and the fast-path check, ~half
# the cost of an open. A changed file has another key and is checked again.
_READERS: dict[tuple[str, int, int, int], str] = {}


def _open_file(p: Path, suffix: str, *, mpp: float | None, slide_id: str, backend: str | None):
    """The reader policy of :func:`open_slide` for a non-empty file that is not a plain image."""
    import openslide

    from mmpath.io import _fast, _tiff

    sid = slide_id
    if backend == "tifffile":
        ts = _tiff.TiffSlide(p, mpp=mpp, slide_id=sid)
        _fast.adopt_openslide_metadata(ts, p, mpp=mpp)
        return ts
    fmt = None
    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
    except openslide.OpenSlideError:
        fmt = None
    if backend is None and fmt in _fast.FAST_VENDORS and _tiff.is_tiff(p):
        try:
            return _fast.open_fast(p, mpp=mpp, slide_id=sid)
        except SlideError:  # openslide refuses it: the tifffile-only path below decides
            return _tiff.open_tiff(p, openslide_ok=True, mpp=mpp, slide_id=sid)
    if fmt is not None and (backend == "openslide" or not _tiff.is_tiff(p)):
        return OpenSlideSlide(p, mpp=mpp, slide_id=sid)
    if fmt is not None or suffix in (".tif", ".tiff") or _tiff.is_tiff(p):
        return _tiff.open_tiff(p, openslide_ok=fmt is not None, mpp=mpp, slide_id=sid)
    if _plain.is_pil_image(p):  # content, not extension, decides (a PNG saved as .svs)
        log.warning("%s is a plain image despite its %r extension; reading it whole", p, suffix)
        return ArraySlide(_plain.read_plain_image(p), mpp=mpp, slide_id=sid, path=p)
    raise SlideError(
        f"cannot read {str(p)!r}: openslide does not recognise it as a slide and it is not a "
        "plain image; check the file is complete and in a supported format"
    )


def _stem(path: Path) -> str:
    """The file name without its extension; OME-TIFFs lose the whole ``.ome.tif``."""
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem
