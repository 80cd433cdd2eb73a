"""Uploaded query images: decoded with limits, so a hostile upload costs a 4xx, not the server.

Checks run cheapest first: the byte size (before decoding), the format (Pillow identifies it
from the header), the pixel count from the header (a decompression bomb is refused before a
single pixel is decoded), then the full decode (a truncated file fails here).
"""

from __future__ import annotations

import io
import warnings

from mmpath.errors import DataError

#: Largest upload accepted, in bytes.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest decoded query image, in pixels (a query is a region, not a slide).
MAX_PIXELS = 40_000_000
#: Formats a browser can send as a query image.
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")


class UploadError(DataError):
    """An uploaded query image is too big, not an image, or damaged (an HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS):
    """A PIL RGB(A) image of an upload, or an :class:`UploadError` naming the problem.

    EXIF orientation is applied, so the query is what a viewer shows.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise UploadError("the upload is empty; send the image file's bytes as the request body")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"the upload is {len(data) / 2**20:.1f} MB; the limit is "
            f"{MAX_UPLOAD_BYTES // 2**20} MB (crop the region of interest)",
            413,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise UploadError(
                    f"the image is {w}x{h} pixels; the limit is {max_pixels / 1e6:.0f} "
                    "megapixels (crop the region of interest)",
                    413,
                )
            if w < 1 or h < 1:
                raise UploadError(f"the image is empty ({w}x{h} pixels)")
            img.load()
            img = ImageOps.exif_transpose(img)
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(
            f"the upload is not an image Pillow can read ({', '.join(FORMATS)}); send a "
            "PNG or JPEG",
            415,
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(
            f"the image decodes to more than {max_pixels / 1e6:.0f} megapixels "
            "(a decompression bomb?); crop the region of interest",
            413,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        text = " ".join(str(err).split())[:200]
        raise UploadError(f"the image is damaged or truncated ({text}); re-save it") from None
    if img.mode not in ("RGB", "RGBA"):
        alpha = "A" in img.mode or "transparency" in img.info
        img = img.convert("RGBA" if alpha else "RGB")
    return img
