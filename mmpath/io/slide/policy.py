"""Which reader opens a file: :func:`open_slide`, the policy over every backend.

Plain images open as :class:`ArraySlide`; generic TIFF and Aperio SVS by direct tile decode
(``mmpath/io/_fast.py``) unless its open-time check refuses; every other format through
openslide; the TIFFs openslide declines through tifffile (``mmpath/io/_tiff.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mmpath.errors import SlideError
from mmpath.io import _plain
from mmpath.io.slide.array_slide import ArraySlide
from mmpath.io.slide.base import Slide
from mmpath.io.slide.openslide_slide import OpenSlideSlide

log = logging.getLogger("mmpath.io.slide")

__all__ = ["open_slide"]


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
