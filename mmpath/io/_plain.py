"""Plain images (PNG, JPEG, single-level TIFF...) read whole, and mpp from TIFF/OME metadata.

What a camera or an export tool writes is not always what a viewer shows, so reading follows
the viewers: EXIF orientation is applied (a phone or microscope-camera JPEG tagged "rotate 90°"
is tiled the way it is displayed), and 16-bit images are scaled to 8 bits over their type's
full range instead of being clipped (which turned every 16-bit slide white). The file's content
decides the reader, not its extension, so a PNG saved as ``.svs`` still opens.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmpath.errors import SlideError

PLAIN_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

# Microscope µm/px in OME-XML (PhysicalSizeX, default unit µm) and the unit factors we accept.
_OME_SIZE = re.compile(r'PhysicalSizeX\s*=\s*"([^"]+)"')
_OME_UNIT = re.compile(r'PhysicalSizeXUnit\s*=\s*"([^"]+)"')
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3}


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """``arr`` as ``uint8``: wider unsigned types scaled over their full range, others clipped.

    Floats in 0..1 are scaled by 255 (the usual float-image convention).
    """
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        scale = 255.0 / np.iinfo(arr.dtype).max
        return np.round(arr * scale).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating) and arr.size and np.nanmax(arr) <= 1.0:
        arr = arr * 255.0
    return np.clip(np.round(np.nan_to_num(arr)), 0, 255).astype(np.uint8)


def is_pil_image(path: Path) -> bool:
    """Whether PIL recognises the file's content as an image (whatever its extension)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about the damaged files it declines
            with Image.open(path) as im:
                return im.format not in (None, "TIFF")  # TIFFs go through tifffile/openslide
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def read_plain_image(path: Path) -> np.ndarray:
    """The whole image as displayed: EXIF orientation applied, RGB(A), 8 bits per channel."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our inputs are legitimately large; this is not a web app
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                # PIL's convert("RGB") clips these to 255; scale over the type instead.
                return to_uint8(np.asarray(im))
            keep = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            return np.asarray(im.convert("RGBA" if keep else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise SlideError(
            f"cannot read image {str(path)!r}: {err}; the file may be corrupt"
        ) from None


def read_plain_tiff(path: Path) -> np.ndarray:
    """Level 0 of a TIFF openslide declines (strip-based, or untiled), channels last."""
    import tifffile

    try:
        arr = tifffile.imread(path, key=0)
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for bad files
        raise SlideError(
            f"cannot read TIFF {str(path)!r}: {err}; the file may be corrupt or truncated"
        ) from None
    if arr.ndim < 2 or arr.size == 0:  # tifffile found no readable page
        raise SlideError(
            f"cannot read TIFF {str(path)!r}: it holds no readable image; the file may be "
            "corrupt or truncated"
        )
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W)
    return to_uint8(arr)


def ome_mpp(description: str | None) -> float | None:
    """µm/px from an OME-XML ``ImageDescription`` (``PhysicalSizeX``), or ``None``."""
    if not description or "PhysicalSizeX" not in description:
        return None
    m = _OME_SIZE.search(description)
    if m is None:
        return None
    try:
        size = float(m.group(1))
    except ValueError:
        return None
    unit = _OME_UNIT.search(description)
    factor = _UM_PER_UNIT.get(unit.group(1) if unit else "µm")
    if factor is None or not size > 0:
        return None
    return size * factor


def tiff_mpp(path: Path, from_props: Callable[[dict[str, str]], float | None]) -> float | None:
    """mpp of a plain TIFF from OME-XML or resolution tags (``from_props`` reads the tags)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            tags = tf.pages[0].tags
            desc = tags["ImageDescription"].value if "ImageDescription" in tags else None
            found = ome_mpp(desc if isinstance(desc, str) else None)
            if found is not None:
                return found
            if "XResolution" not in tags:
                return None
            num, den = tags["XResolution"].value
            unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
            props = {
                "tiff.XResolution": str(num / den if den else 0),
                "tiff.ResolutionUnit": {2: "inch", 3: "centimeter"}.get(int(unit), ""),
            }
            mpp = from_props(props)
            # Plain images often carry a screen dpi (72, 96, 300): that is not a microscope.
            return mpp if mpp is not None and mpp <= 50 else None
    except Exception:  # noqa: BLE001 - metadata is optional
        return None
