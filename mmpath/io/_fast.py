"""The fast path: TIFF-family slides read by direct tile decode (tifffile + imagecodecs).

openslide's generic-TIFF and Aperio readers decode one tile at a time through libtiff /
libjpeg / OpenJPEG, wrap each region in a PIL RGBA image and cost ~0.7-0.85x a bare openslide
loop once mmpath converts to RGB. :class:`mmpath.io.slide.tiff_slide.TiffSlide` reads the
same tiles with ``FileHandle.read_segments`` and imagecodecs, caches decoded tiles, and returns
the same pixels 2-3x faster. So it is the default reader for the TIFF flavours it is proven equal on
(``tests/io/test_fast_path.py``): openslide's ``generic-tiff`` and ``aperio`` vendors.

:func:`fast_path_refusal` is the open-time check. The fast path is refused, and openslide
kept, when anything is outside what was proven equal:

* another vendor (Hamamatsu NDPI, Philips, Ventana, MIRAX...: openslide knows their layouts,
  e.g. Ventana's overlapping tiles or NDPI's restart-marker strips);
* a level that is not tiled, not 8-bit, not 1 or 3 samples per pixel, planar, or compressed
  with something other than none, LZW, deflate, zstd, JPEG or RGB JPEG 2000 (Aperio 33003,
  YCbCr JPEG 2000, decodes to different colours in the two readers and stays with openslide);
* a photometric other than RGB, greyscale or JPEG-YCbCr;
* a tile that is missing (byte count 0: openslide draws it transparent, libtiff may not);
* a pyramid geometry that differs from openslide's (other than extra SubIFD levels).

The choice is logged (``mmpath.io`` logger, INFO) and recorded in provenance as ``backend``.
The slide still carries openslide's properties (vendor, ``aperio.*``, mpp, objective) and
associated images, so nothing downstream sees a difference except speed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmpath.errors import SlideError

log = logging.getLogger("mmpath.io")

FAST_VENDORS = frozenset({"generic-tiff", "aperio"})
# none, LZW, deflate (Adobe + old), JPEG, Aperio JPEG 2000 RGB, JPEG 2000, zstd
_COMPRESSION_OK = frozenset({1, 5, 8, 32946, 7, 33005, 34712, 50000})
_PHOTOMETRIC_OK = frozenset({1, 2, 6})  # minisblack, RGB, YCbCr (JPEG only)


def fast_path_refusal(ts, osl) -> str | None:
    """Why the tifffile reader must not replace openslide for this file, or ``None``.

    Parameters
    ----------
    ts
        The file opened with :class:`~mmpath.io.slide.tiff_slide.TiffSlide`.
    osl
        The same file opened with :class:`~mmpath.io.slide.OpenSlideSlide`.

    Returns
    -------
    A short reason, or ``None`` when the fast path reads this file exactly as openslide does.
    """
    if osl.vendor not in FAST_VENDORS:
        return f"vendor {osl.vendor!r} is read by openslide"
    n = osl.level_count
    if ts.level_dimensions[:n] != osl.level_dimensions:
        return f"tifffile sees levels {ts.level_dimensions[:n]}, openslide {osl.level_dimensions}"
    for i, lv in enumerate(ts._levels):
        page = lv.page
        where = f"level {i}"
        if not page.is_tiled:
            return f"{where} is striped, not tiled"
        if int(page.compression) not in _COMPRESSION_OK:
            return f"{where} compression {int(page.compression)} is not on the fast path"
        photometric = int(page.photometric)
        if photometric not in _PHOTOMETRIC_OK or (photometric == 6 and page.compression != 7):
            return f"{where} photometric {page.photometric!r} is unusual"
        if page.bitspersample != 8 or page.samplesperpixel not in (1, 3):
            return (
                f"{where} has {page.samplesperpixel} sample(s) of {page.bitspersample} bits, "
                "not 8-bit RGB or grey"
            )
        if page.samplesperpixel > 1 and page.planarconfig != 1:
            return f"{where} stores colour planes separately"
        if page.shaped[1] != 1:
            return f"{where} is volumetric"
        if min(page.databytecounts, default=0) == 0:
            return f"{where} has missing tiles"
    return None


def open_fast(path: Path, *, mpp: float | None, slide_id: str):
    """The tifffile reader when :func:`fast_path_refusal` passes, else openslide's choice.

    Raises :class:`~mmpath.errors.SlideError` only when openslide itself cannot open the file
    (the caller then tries tifffile alone).
    """
    from mmpath.io import _tiff
    from mmpath.io.slide import OpenSlideSlide

    osl = OpenSlideSlide(path, mpp=mpp, slide_id=slide_id)
    try:
        ts = _tiff.TiffSlide(path, mpp=mpp, slide_id=slide_id)
    except SlideError as err:
        log.info("%s: reading with openslide (tifffile cannot open it: %s)", path, err)
        return osl
    reason = fast_path_refusal(ts, osl)
    if reason is not None:
        log.info("%s: reading with openslide (%s)", path, reason)
        return _tiff.choose_tiff_backend(osl, mpp=mpp, slide_id=slide_id, ts=ts)
    ts.adopt(osl)
    osl.close()
    log.info("%s: reading with tifffile (direct tile decode, %s)", path, ts.vendor)
    return ts


def adopt_openslide_metadata(ts, path: Path, *, mpp: float | None) -> None:
    """Give a forced-tifffile slide openslide's properties and mpp when openslide opens it."""
    import openslide

    from mmpath.io.slide import OpenSlideSlide

    try:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            return
        osl = OpenSlideSlide(path, mpp=mpp, slide_id=ts.slide_id)
    except (openslide.OpenSlideError, SlideError):
        return
    if ts.level_dimensions[: osl.level_count] == osl.level_dimensions:
        ts.adopt(osl)
    osl.close()
