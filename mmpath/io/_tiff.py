"""Which TIFFs tifffile reads instead of openslide, when the fast path does not decide.

openslide's generic-TIFF reader goes through libtiff's RGBA interface, which refuses some valid
files (an uncompressed tiled TIFF whose tile size it disagrees with fails every read with
"Invalid tile byte count"), and it only looks at the main IFD chain, so pyramid levels stored as
SubIFDs (what ``tifffile.imwrite(..., subifds=n)``, bfconvert and QuPath write) are invisible.
Striped TIFFs it declines altogether. :class:`TiffSlide` (``mmpath/io/slide/tiff_slide.py``)
reads all of these.

:func:`choose_tiff_backend` is the policy :func:`mmpath.io.open_slide` applies: openslide stays
the reader whenever it reads the file fully; tifffile takes over only when openslide cannot read
a probe region that tifffile can, or when tifffile finds more pyramid levels (SubIFDs).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmpath.errors import SlideError
from mmpath.io import _plain
from mmpath.io.slide.base import Slide, metadata_mpp
from mmpath.io.slide.tiff_slide import TiffSlide, is_tiff

log = logging.getLogger(__name__)

__all__ = ["TiffSlide", "is_tiff", "choose_tiff_backend", "open_tiff"]

# Side of the region read to check that a backend can read a file (one tile or two).
_PROBE = 16


def _probe(slide: Slide) -> str | None:
    """``None`` if a small region at the centre of level 0 and at the deepest level reads."""
    W, H = slide.dimensions
    n = min(_PROBE, W, H)
    last = slide.level_count - 1
    lw, lh = slide.level_dimensions[last]
    try:
        slide.read_region(((W - n) // 2, (H - n) // 2), 0, (n, n))
        slide.read_region((0, 0), last, (min(_PROBE, lw), min(_PROBE, lh)))
    except SlideError as err:
        return str(err)
    return None


def choose_tiff_backend(
    osl: Slide, *, mpp: float | None, slide_id: str, ts: TiffSlide | None = None
) -> Slide:
    """``osl`` (openslide), or a :class:`TiffSlide` when openslide cannot read the TIFF fully.

    tifffile takes over when openslide fails a probe read that tifffile passes, or when the
    file is a generic TIFF whose pyramid tifffile sees more levels of (SubIFDs). ``ts``, the
    same file already opened with tifffile (the fast-path check has one), saves a reopen; it
    is closed unless it is returned.
    """
    if osl.path is None or not is_tiff(osl.path):
        if ts is not None:
            ts.close()
        return osl
    failed = _probe(osl)
    if failed is None and osl.vendor != "generic-tiff":
        if ts is not None:
            ts.close()
        return osl
    if ts is None:
        try:
            ts = TiffSlide(osl.path, mpp=mpp, slide_id=slide_id)
        except SlideError:
            return osl
    if failed is None:
        if ts.level_count > osl.level_count:
            log.info(
                "%s: openslide sees %d level(s), tifffile %d (SubIFDs); reading with tifffile",
                osl.path,
                osl.level_count,
                ts.level_count,
            )
            osl.close()
            return ts
        ts.close()
        return osl
    if _probe(ts) is None:
        log.info("%s: openslide cannot read it (%s); reading with tifffile", osl.path, failed)
        osl.close()
        return ts
    ts.close()
    return osl  # both fail: the file really is damaged, openslide's error says where


def open_tiff(path: Path, *, openslide_ok: bool, mpp: float | None, slide_id: str) -> Slide:
    """A TIFF through openslide when it reads it fully, else :class:`TiffSlide`.

    Striped files that neither openslide nor :class:`TiffSlide` handles are read whole.
    """
    from mmpath.io.slide import ArraySlide, OpenSlideSlide

    if openslide_ok:
        try:
            osl = OpenSlideSlide(path, mpp=mpp, slide_id=slide_id)
        except SlideError as err:
            try:
                ts = TiffSlide(path, mpp=mpp, slide_id=slide_id)
            except SlideError:
                raise err from None
            if _probe(ts) is not None:
                ts.close()
                raise err from None
            log.info("%s: openslide refuses it (%s); reading with tifffile", path, err)
            return ts
        return choose_tiff_backend(osl, mpp=mpp, slide_id=slide_id)
    try:
        ts = TiffSlide(path, mpp=mpp, slide_id=slide_id)
        if _probe(ts) is None:
            return ts
        ts.close()
    except SlideError:
        pass
    # Not something to read by segment (e.g. subsampled YCbCr strips): read level 0 whole.
    slide = ArraySlide(_plain.read_plain_tiff(path), mpp=mpp, slide_id=slide_id, path=path)
    if mpp is None:
        slide.mpp = _plain.tiff_mpp(path, metadata_mpp)
        slide.mpp_source = "metadata" if slide.mpp else None
    return slide
