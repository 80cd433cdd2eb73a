"""Image + mask pairs for segmentation training, checked up front.

Sources (:func:`load_seg_pairs`):

* an ``.npz`` with ``images`` ``(n, H, W, 3)`` uint8 and ``masks`` ``(n, H, W)`` integer labels;
* a folder with ``images/`` and ``masks/`` subfolders whose files share stems (PNG, TIFF, JPEG
  images; PNG or TIFF label masks, one label value per pixel).

:func:`check_pairs` raises :class:`~mmpath.errors.DataError` for a mask whose size does not
match its image and for label values outside the class set. :func:`pairs_from_annotations`
cuts a slide and its rasterised polygon annotations (QuPath GeoJSON, ASAP XML) into pairs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mmpath.errors import DataError
from mmpath.io import _prov
from mmpath.metrics import check_labels

__all__ = ["SegPairs", "load_seg_pairs", "check_pairs", "pairs_from_annotations"]

_IMG_EXT = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
_MASK_EXT = (".png", ".tif", ".tiff")


class SegPairs(NamedTuple):
    images: list[np.ndarray]  # (H, W, 3) uint8 each
    masks: list[np.ndarray]  # (H, W) labels each
    names: list[str]


def check_pairs(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    num_classes: int,
    *,
    names: Sequence[str] | None = None,
    ignore_index: int | None = None,
) -> None:
    """Raise DataError unless every mask matches its image and holds known labels.

    Example
    -------
    >>> check_pairs(data.images, data.masks, num_classes=2)
    """
    if len(images) != len(masks):
        raise DataError(f"{len(images)} images but {len(masks)} masks; give one mask per image")
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        what = repr(names[i]) if names is not None else f"#{i}"
        img, m = np.asarray(img), np.asarray(m)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise DataError(f"image {what} has shape {img.shape}; expected (H, W, 3) RGB")
        if m.ndim != 2:
            raise DataError(f"mask {what} has shape {m.shape}; expected (H, W) label values")
        if m.shape != img.shape[:2]:
            raise DataError(
                f"mask {what} is {m.shape[1]}x{m.shape[0]} px but its image is "
                f"{img.shape[1]}x{img.shape[0]} px; masks must match their image pixel for pixel"
            )
        check_labels(m, num_classes, ignore_index=ignore_index, what=f"mask {what}")


def _read(path: Path, *, mask: bool) -> np.ndarray:
    from PIL import Image

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(path)
    else:
        with Image.open(path) as im:
            arr = np.asarray(im if mask else im.convert("RGB"))
    if mask and arr.ndim == 3:
        raise DataError(f"mask {str(path)!r} has colour channels; save label values (one per px)")
    if not mask and arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr


def load_seg_pairs(
    path: str | os.PathLike[str], num_classes: int, *, ignore_index: int | None = None
) -> SegPairs:
    """Read and check image/mask pairs from an ``.npz`` or an ``images/`` + ``masks/`` folder.

    Example
    -------
    >>> pairs = load_seg_pairs("data/glands", num_classes=2)
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"segmentation data {str(p)!r} does not exist")
    if p.is_file() and p.suffix == ".npz":
        with np.load(p) as z:
            if "images" not in z or "masks" not in z:
                raise DataError(f"{str(p)!r} must hold arrays 'images' and 'masks'")
            images, masks = list(z["images"]), list(z["masks"])
        names = [f"{p.name}[{i}]" for i in range(len(images))]
    elif p.is_dir():
        img_dir, mask_dir = p / "images", p / "masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise DataError(f"{str(p)!r} needs 'images/' and 'masks/' subfolders")
        imgs = {f.stem: f for f in sorted(img_dir.iterdir()) if f.suffix.lower() in _IMG_EXT}
        msks = {f.stem: f for f in sorted(mask_dir.iterdir()) if f.suffix.lower() in _MASK_EXT}
        missing = sorted(set(imgs) - set(msks))
        if missing:
            raise DataError(f"no mask for image(s) {missing[:5]} in {str(mask_dir)!r}")
        names = sorted(imgs)
        if not names:
            raise DataError(f"no images in {str(img_dir)!r}")
        images = [_read(imgs[s], mask=False) for s in names]
        masks = [_read(msks[s], mask=True) for s in names]
    else:
        raise DataError(f"{str(p)!r}: give an .npz file or a folder with images/ and masks/")
    check_pairs(images, masks, num_classes, names=names, ignore_index=ignore_index)
    return SegPairs(images, [np.asarray(m) for m in masks], names)


def pairs_from_annotations(
    slide,
    annotations,
    *,
    tile_size: int,
    mpp: float | None = None,
    labels: Sequence[str] | None = None,
    min_annotated: float = 0.0,
) -> tuple[SegPairs, tuple[str, ...]]:
    """Training pairs from a slide and its polygon annotations (QuPath GeoJSON, ASAP XML).

    The annotations are rasterised at ``mpp`` (:meth:`mmpath.io.Annotations.to_mask`: label
    ``i`` of ``labels`` becomes value ``i + 1``, unannotated pixels are 0 = background) and the
    slide is cut into ``tile_size`` tiles at the same resolution.

    Parameters
    ----------
    slide
        The open slide.
    annotations
        An :class:`~mmpath.io.Annotations` or a path to one.
    tile_size
        Tile side in pixels at ``mpp``.
    mpp
        Resolution (µm/px); ``None`` reads level 0.
    labels
        Labels to use, in value order (default: all, in order of appearance).
    min_annotated
        Keep tiles whose annotated (non-background) fraction is at least this.

    Returns
    -------
    ``(pairs, class_names)`` with ``class_names = ("background", *labels)``.

    Example
    -------
    >>> pairs, names = pairs_from_annotations(slide, "slide.geojson", tile_size=256, mpp=1.0)
    """
    from mmpath.io import read_annotations, read_tiles
    from mmpath.pp import tile

    ann = annotations
    if isinstance(ann, (str, os.PathLike)):
        ann = read_annotations(ann, slide=slide)
    labels = list(ann.labels if labels is None else labels)
    downsample = (mpp / slide.require_mpp()) if mpp is not None else 1.0
    mask, values = ann.to_mask(slide, downsample=downsample, labels=labels)
    tiles = tile(slide, tile_size, mpp=mpp, min_tissue=0)
    size0 = float(_prov.tiling(tiles, slide.slide_id)["size0"])
    scale = size0 / tile_size  # level-0 px per tile px (the effective downsample)
    crops, keep = [], []
    for i, (x, y) in enumerate(zip(tiles.obs["x"], tiles.obs["y"], strict=True)):
        r0, c0 = int(round(y / scale)), int(round(x / scale))
        crop = np.zeros((tile_size, tile_size), mask.dtype)
        part = mask[r0 : r0 + tile_size, c0 : c0 + tile_size]
        crop[: part.shape[0], : part.shape[1]] = part
        if (crop > 0).mean() >= min_annotated:
            crops.append(crop)
            keep.append(i)
    if not keep:
        raise DataError(
            f"no tile of slide {slide.slide_id!r} reaches min_annotated={min_annotated}"
        )
    images = read_tiles(slide, tiles[keep])
    names = [f"{slide.slide_id}:{i}" for i in keep]
    return SegPairs(list(images), crops, names), ("background", *labels)
