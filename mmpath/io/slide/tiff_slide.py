"""Slides read with tifffile: the TIFFs openslide declines, misreads or only half sees.

openslide's generic-TIFF reader goes through libtiff's RGBA interface, which refuses some valid
files (an uncompressed tiled TIFF whose tile size it disagrees with fails every read with
"Invalid tile byte count"), and it only looks at the main IFD chain, so pyramid levels stored as
SubIFDs (what ``tifffile.imwrite(..., subifds=n)``, bfconvert and QuPath write) are invisible.
Striped TIFFs it declines altogether. :class:`TiffSlide` reads all of these.

Reading is lazy, by segment (tile or strip), the way tifffile's own zarr store does it but
without the zarr dependency: a region read fetches only the segments it touches
(``FileHandle.read_segments``), decodes them with the page's decoder, and keeps the decoded
segments in a small per-slide LRU cache (tiles overlapping several reads decode once).
Uncompressed contiguous pages (e.g. one huge strip) are memory-mapped and sliced instead. A
whole level is never decoded at once, unless the file stores it as one compressed segment.

The policy that picks this reader or openslide is ``mmpath/io/_tiff.py`` (files openslide
reads badly) and ``mmpath/io/_fast.py`` (the fast path, the default where proven equal).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mmpath.errors import SlideError, TileReadError
from mmpath.io import _plain
from mmpath.io._mpp import check_mpp, plausible_metadata_mpp
from mmpath.io.slide.base import Slide, metadata_mpp, rgba_to_rgb

__all__ = ["TiffSlide", "is_tiff"]

# Decoded segments kept per open slide (bytes); a few rows of 256-px tiles at 16 bits.
_CACHE_BYTES = 48 << 20
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Tags copied into ``properties`` under openslide's ``tiff.`` names.
_TAGS = (
    "ImageDescription",
    "Make",
    "Model",
    "Software",
    "DateTime",
    "Artist",
    "HostComputer",
    "Copyright",
    "DocumentName",
    "XResolution",
    "YResolution",
    "ResolutionUnit",
)
_PHOTOMETRIC_OK = {0, 1, 2, 3, 6}  # miniswhite, minisblack, rgb, palette, ycbcr (decoded)


def is_tiff(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with a TIFF or BigTIFF header."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


class _Level:
    """One pyramid level: a TIFF page read by segment (or memory-mapped when uncompressed)."""

    def __init__(self, page, path: str, byteorder: str) -> None:
        self.page = page
        S, D, H, W, C = page.shaped
        if D != 1:
            raise SlideError(f"{path!r}: volumetric TIFF pages (depth {D}) are not slides")
        self.samples, self.contig = S, C  # separate planes, contiguous samples per pixel
        self.width, self.height = W, H
        self.dtype = page.dtype
        if page.is_tiled:
            self.seg_h, self.seg_w = page.tilelength, page.tilewidth
        else:
            self.seg_h, self.seg_w = max(1, min(page.rowsperstrip, H)), W
        self.rows, self.cols = math.ceil(H / self.seg_h), math.ceil(W / self.seg_w)
        # 8-bit RGB pixels as decoded (RGB, or JPEG YCbCr which decodes to RGB): a region
        # inside one tile can be returned as a view of the decoded tile.
        self.rgb8 = (
            page.is_tiled
            and S == 1
            and C == 3
            and np.dtype(page.dtype) == np.uint8
            and int(page.photometric) in (2, 6)
            and not tuple(page.extrasamples)
        )
        self.memmap = None
        if page.is_contiguous and page.fillorder == 1 and page.predictor == 1:
            dtype = np.dtype(self.dtype).newbyteorder(byteorder)
            self.memmap = np.memmap(
                path, dtype=dtype, mode="r", offset=page.dataoffsets[0], shape=page.shaped
            )[:, 0]


class TiffSlide(Slide):
    """A TIFF read with tifffile: tiled or striped, levels as pages or SubIFDs.

    Parameters
    ----------
    path
        The TIFF file.
    mpp
        Level-0 µm/px; overrides (and is recorded instead of) the metadata.
    slide_id
        Defaults to the file stem.

    Example
    -------
    >>> slide = TiffSlide("pyramid_subifds.tif")
    >>> slide.level_downsamples
    (1.0, 2.0, 4.0)
    """

    backend = "tifffile"

    def __init__(
        self, path: str | os.PathLike[str], *, mpp: float | None = None, slide_id: str | None = None
    ) -> None:
        self.path = str(Path(path).resolve())
        self.slide_id = slide_id or Path(self.path).stem
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes = 0
        self._tf = None
        self._pid = None
        tf = self._handle()
        self.properties = _properties(tf)
        self.vendor = "aperio" if tf.is_svs else "ome-tiff" if tf.is_ome else "generic-tiff"
        self.level_dimensions = tuple((lv.width, lv.height) for lv in self._levels)
        W, H = self.level_dimensions[0]
        # openslide's definition, so both backends tile a pyramid identically.
        self.level_downsamples = tuple((W / w + H / h) / 2 for w, h in self.level_dimensions)
        what = f"slide {self.slide_id!r}"
        if mpp is not None:
            self.mpp, self.mpp_source = check_mpp(mpp, what=what), "override"
        else:
            found = metadata_mpp(self.properties)
            if found is not None and not self._levels[0].page.is_tiled and found > 50:
                found = None  # a plain striped image's screen dpi (72, 300), not a microscope
            found = plausible_metadata_mpp(found, what)
            self.mpp, self.mpp_source = found, ("metadata" if found is not None else None)
        # openslide's normalised names too, so code reading properties works on either backend.
        self.properties.update(_openslide_props(self))
        self._openslide_assoc = False

    def adopt(self, osl: Slide) -> None:
        """Take openslide's view of the metadata (vendor, properties, mpp, associated images).

        Used by the fast path (``mmpath/io/_fast.py``): the pixels come from tifffile, the
        description from openslide, so a slide reads the same whichever backend serves it.
        """
        props = dict(osl.properties)
        props.update({k: v for k, v in _openslide_props(self).items() if ".level" in k})
        self.properties = props
        self.vendor = osl.vendor
        self.mpp, self.mpp_source = osl.mpp, osl.mpp_source
        self._openslide_assoc = True

    def associated_image_names(self) -> list[str]:
        if not getattr(self, "_openslide_assoc", False):
            return []
        import openslide

        with openslide.OpenSlide(self.path) as osr:
            return sorted(osr.associated_images)

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self.associated_image_names():
            return super().associated_image(name)
        import openslide

        with openslide.OpenSlide(self.path) as osr:
            img = osr.associated_images[name].convert("RGBA")
            return rgba_to_rgb(np.asarray(img))

    # -- handle -----------------------------------------------------------------------------
    def _handle(self):
        if self._tf is not None and self._pid == os.getpid():
            return self._tf
        import tifffile

        self._tf, self._pid = None, os.getpid()  # a forked handle shares its file offset
        self._cache.clear()
        self._cache_bytes = 0
        try:
            tf = tifffile.TiffFile(self.path)
        except Exception as err:  # noqa: BLE001 - tifffile raises many types for bad files
            raise SlideError(
                f"cannot read TIFF {self.path!r}: {err}; the file may be corrupt or truncated"
            ) from None
        try:
            self._levels = [_Level(p, self.path, tf.byteorder) for p in _level_pages(tf)]
        except SlideError:
            tf.close()
            raise
        except Exception as err:  # noqa: BLE001
            tf.close()
            raise SlideError(f"cannot read TIFF {self.path!r}: {err}") from None
        self._tf = tf
        return tf

    def close(self) -> None:
        if self._tf is not None:
            self._tf.close()
        self._tf = None
        self._levels = []
        self._cache.clear()
        self._cache_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_tf=None, _pid=None, _levels=[], _lock=None, _cache=OrderedDict())
        state["_cache_bytes"] = 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- pixels -----------------------------------------------------------------------------
    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        with self._lock:
            self._handle()
            lv = self._levels[level]
            ds = self.level_downsamples[level]
            # Nearest level pixel: level-0 coordinates are rounded level coordinates times a
            # non-integer downsample (4.0003 on real pyramids), so floor would shift by one.
            # openslide paints such regions at the fractional offset (a sub-pixel blend).
            lx, ly = int(math.floor(x / ds + 0.5)), int(math.floor(y / ds + 0.5))
            view = self._segment_view(lv, level, lx, ly, w, h)
            if view is not None:
                return view
            out = np.full((h, w, 3), 255, np.uint8)  # outside the image is empty, as elsewhere
            x0, y0 = max(lx, 0), max(ly, 0)
            x1, y1 = min(lx + w, lv.width), min(ly + h, lv.height)
            if x1 <= x0 or y1 <= y0:
                return out
            try:
                raw = self._window(lv, level, x0, y0, x1, y1)
            except TileReadError:
                raise
            except Exception as err:  # noqa: BLE001 - decoders raise many types
                raise TileReadError(
                    f"slide {self.slide_id!r}: could not read region x={x}, y={y}, {w}x{h} at "
                    f"level {level} with tifffile ({err}); the file is damaged there"
                ) from None
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = _to_rgb(raw, lv.page)
            return out

    def _segment_view(
        self, lv: _Level, level: int, lx: int, ly: int, w: int, h: int
    ) -> np.ndarray | None:
        """A read-only view into one cached decoded tile when the region lies inside it.

        The common case (a 128 or 256 px tile on a 256 px tile grid of an 8-bit RGB level):
        no assembly buffer, no white fill, no second copy; the caller copies once (into its
        batch). ``None`` sends every other region through :meth:`_window`.
        """
        if not lv.rgb8 or lx < 0 or ly < 0 or lx + w > lv.width or ly + h > lv.height:
            return None
        r, c = ly // lv.seg_h, lx // lv.seg_w
        if (ly + h - 1) // lv.seg_h != r or (lx + w - 1) // lv.seg_w != c:
            return None
        i = r * lv.cols + c
        try:
            seg = self._segments(lv, level, [i])[i]
        except Exception:  # noqa: BLE001 - the general path reports the damage in one line
            return None
        if seg is None:
            return None
        ty, tx = ly - r * lv.seg_h, lx - c * lv.seg_w
        view = seg[ty : ty + h, tx : tx + w]
        view.flags.writeable = False  # it is the cache's array
        return view

    def _window(self, lv: _Level, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level pixels ``[y0:y1, x0:x1]`` as ``(samples, h, w, contig)`` in the file's dtype."""
        if lv.memmap is not None:
            return np.array(lv.memmap[:, y0:y1, x0:x1])
        out = np.empty((lv.samples, y1 - y0, x1 - x0, lv.contig), lv.dtype)
        r0, r1 = y0 // lv.seg_h, (y1 - 1) // lv.seg_h
        c0, c1 = x0 // lv.seg_w, (x1 - 1) // lv.seg_w
        plane = lv.rows * lv.cols
        wanted = [
            (s, r, c, s * plane + r * lv.cols + c)
            for s in range(lv.samples)
            for r in range(r0, r1 + 1)
            for c in range(c0, c1 + 1)
        ]
        segs = self._segments(lv, level, [i for *_, i in wanted])
        for s, r, c, i in wanted:
            seg = segs[i]
            ty, tx = r * lv.seg_h, c * lv.seg_w
            ya, yb = max(y0, ty), min(y1, ty + lv.seg_h)
            xa, xb = max(x0, tx), min(x1, tx + lv.seg_w)
            dst = out[s, ya - y0 : yb - y0, xa - x0 : xb - x0]
            if seg is None:  # an empty (never written) tile: blank, like openslide
                dst[...] = _blank(lv.dtype)
            else:
                dst[...] = seg[ya - ty : yb - ty, xa - tx : xb - tx]
        return out

    def _segments(self, lv: _Level, level: int, indices: list[int]) -> dict[int, Any]:
        found = {}
        missing = []
        for i in indices:
            key = (level, i)
            if key in self._cache:
                self._cache.move_to_end(key)
                found[i] = self._cache[key]
            else:
                missing.append(i)
        if not missing:
            return found
        page = lv.page
        decode = page.decode
        kwargs: dict[str, Any] = {"_fullsize": page.is_tiled}
        if page.compression in {6, 7, 34892, 33007}:  # JPEG flavours
            kwargs.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        offsets, counts = page.dataoffsets, page.databytecounts
        for data, i in self._tf.filehandle.read_segments(
            [offsets[i] for i in missing],
            [counts[i] for i in missing],
            indices=missing,
            sort=True,
            lock=self._lock,
            flat=True,
        ):
            seg = decode(data if counts[i] else None, i, **kwargs)[0]
            seg = None if seg is None else seg[0]  # drop the depth axis: (h, w, contig)
            found[i] = seg
            self._remember((level, i), seg)
        return found

    def _remember(self, key: tuple[int, int], seg: np.ndarray | None) -> None:
        self._cache[key] = seg
        self._cache_bytes += 0 if seg is None else seg.nbytes
        while self._cache_bytes > _CACHE_BYTES and len(self._cache) > 1:
            old = self._cache.popitem(last=False)[1]
            self._cache_bytes -= 0 if old is None else old.nbytes


def _blank(dtype) -> Any:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return True
    return np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0


def _to_rgb(raw: np.ndarray, page) -> np.ndarray:
    """``(samples, h, w, contig)`` in the file's photometric and dtype as RGB ``uint8``."""
    arr = np.moveaxis(raw[..., 0], 0, -1) if raw.shape[0] > 1 else raw[0]
    photometric = int(page.photometric)
    if photometric == 3:  # palette: look the indices up in the 16-bit colormap
        cmap = np.asarray(page.colormap)
        return _plain.to_uint8(cmap[:, arr[..., 0]].transpose(1, 2, 0).astype(np.uint16))
    arr = _plain.to_uint8(arr)
    if photometric == 0:  # min-is-white
        arr = 255 - arr
    n = arr.shape[-1]
    if n == 1:
        return np.repeat(arr, 3, axis=2)
    if n == 2:  # grey + alpha
        return rgba_to_rgb(np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:]], 2))
    if n >= 4 and tuple(page.extrasamples[:1]) in ((1,), (2,)):
        return rgba_to_rgb(np.ascontiguousarray(arr[..., :4]))
    return np.ascontiguousarray(arr[..., :3])


def _level_pages(tf) -> list:
    """Level-0 page first, then every reduced level (SubIFDs or later pages), largest first."""
    import tifffile

    series = tf.series[0]
    base = series.levels[0].keyframe
    if int(base.photometric) not in _PHOTOMETRIC_OK:
        raise SlideError(
            f"{tf.filehandle.path!r}: TIFF photometric {base.photometric!r} is not supported "
            "(RGB, greyscale, palette or YCbCr-JPEG)"
        )
    W, H = base.imagewidth, base.imagelength
    pages = [lvl.pages[0] for lvl in series.levels[1:]]  # tifffile's own pyramid (SubIFDs...)
    # Generic pyramids store reduced levels as further pages of the main IFD chain.
    for i in range(1, min(len(tf.pages), 64)):
        p = tf.pages[i]
        if p.is_tiled == base.is_tiled and not (p.subfiletype & ~1):
            pages.append(p)
    levels, sizes = [base], {(W, H)}
    for p in pages:
        if p is None:
            continue
        if not isinstance(p, tifffile.TiffPage):
            p = p.aspage()
        w, h = p.imagewidth, p.imagelength
        if (w, h) in sizes or not (0 < w <= W and 0 < h <= H) or p.shaped[1] != 1:
            continue
        dx, dy = W / w, H / h
        if abs(dx - dy) > 0.02 * max(dx, dy) and abs(W / dy - w) > 1.5:
            continue  # another image (label, macro, overview), not a level of this one
        if p.samplesperpixel != base.samplesperpixel or p.photometric != base.photometric:
            continue
        levels.append(p)
        sizes.add((w, h))
    return sorted(levels, key=lambda p: -p.imagewidth)


def _properties(tf) -> dict[str, str]:
    tags = tf.pages[0].tags
    props: dict[str, str] = {}
    for name in _TAGS:
        if name not in tags:
            continue
        value = tags[name].value
        if name in ("XResolution", "YResolution"):
            num, den = value
            value = num / den if den else 0
        elif name == "ResolutionUnit":
            value = {1: "", 2: "inch", 3: "centimeter"}.get(int(value), "")
        elif isinstance(value, bytes):
            value = value.decode("latin-1")
        props[f"tiff.{name}"] = str(value)
    return props


def _openslide_props(slide: TiffSlide) -> dict[str, str]:
    props = {"openslide.vendor": slide.vendor, "openslide.level-count": str(slide.level_count)}
    for i, lv in enumerate(slide._levels):
        key = f"openslide.level[{i}]."
        props.update({key + "width": str(lv.width), key + "height": str(lv.height)})
        props[key + "downsample"] = repr(slide.level_downsamples[i])
        props.update({key + "tile-width": str(lv.seg_w), key + "tile-height": str(lv.seg_h)})
    if slide.mpp_source == "metadata":
        props["openslide.mpp-x"] = props["openslide.mpp-y"] = repr(slide.mpp)
    return props
