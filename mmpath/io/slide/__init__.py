"""Slides: one interface over openslide, tifffile and in-memory arrays.

:class:`Slide` is what every step that reads pixels takes. The backends, one module each:

* :class:`OpenSlideSlide` (``openslide_slide.py``) for every format openslide reads (Aperio,
  Hamamatsu, MIRAX, Leica, Philips, Ventana, DICOM, generic tiled TIFF...);
* :class:`ArraySlide` (``array_slide.py``) for plain images (PNG, JPEG, single-level TIFF) and
  tests;
* ``TiffSlide`` (``tiff_slide.py``) for TIFF-family slides read by direct tile decode (the
  default where proven equal to openslide, ``mmpath/io/_fast.py``) and the TIFFs openslide
  declines or misreads (``mmpath/io/_tiff.py``).

:func:`open_slide` (``policy.py``) chooses among them. All return RGB ``uint8`` arrays of
shape ``(h, w, 3)``; transparent pixels (outside the scanned area) are composited onto white
(:func:`rgba_to_rgb`), which is what the glass looks like.
"""

from mmpath.io import _mpp
from mmpath.io.slide.array_slide import ArraySlide
from mmpath.io.slide.base import MPP_PLAUSIBLE, Slide, metadata_mpp, rgba_to_rgb
from mmpath.io.slide.openslide_slide import OpenSlideSlide

# With the private names this module had before it became a package (still imported here).
from mmpath.io.slide.openslide_slide import _dicom_entry as _dicom_entry
from mmpath.io.slide.openslide_slide import _pil_rgba_to_rgb as _pil_rgba_to_rgb
from mmpath.io.slide.policy import _READERS as _READERS
from mmpath.io.slide.policy import _stem as _stem
from mmpath.io.slide.policy import open_slide

__all__ = ["Slide", "OpenSlideSlide", "ArraySlide", "open_slide", "rgba_to_rgb", "metadata_mpp"]
__all__ += ["MPP_PLAUSIBLE"]

_rgba_to_rgb = rgba_to_rgb
_metadata_mpp = metadata_mpp


def _check_mpp(mpp: float | None, what: str) -> float | None:
    return _mpp.check_mpp(mpp, what=what)
