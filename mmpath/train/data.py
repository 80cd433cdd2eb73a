"""Training data: image(-caption) rows from tables, read lazily and augmented per sample.

Three kinds of table, mixed freely (one :class:`ImageTable` concatenates them):

* ``.csv`` / ``.parquet`` with an image-file column (paths relative to the table's folder);
* ``.csv`` / ``.parquet`` with slide path + ``x`` + ``y`` (level-0 pixels, top-left)
  [+ ``size`` and ``level``]: regions read through :func:`mmpath.io.open_slide`;
* ``.h5ad`` tile tables (:func:`mmpath.pp.tile`): pixels through
  :class:`mmpath.io.TileReader`, captions (if any) from an ``obs`` column.

Everything a worker process needs is picklable: slide handles open lazily, once per process.
Problems a user can cause raise :class:`~mmpath.errors.DataError` up front (a missing table,
no caption column, empty captions, image files that do not exist), not halfway through a run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmpath.errors import DataError, MmpathError
from mmpath.train.augment import Augment, AugmentConfig, sample_rng, to_tensor

log = logging.getLogger(__name__)

__all__ = ["TableConfig", "ImageTable", "load_table", "ImageDataset", "split_rows"]

_TABLE_EXT = (".csv", ".tsv", ".parquet", ".pq", ".h5ad")
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class TableConfig:
    """Where training rows come from and which columns hold what."""

    train: tuple[str, ...] = ()  # tables (.csv/.parquet/.h5ad) or folders of image files
    val: tuple[str, ...] = ()  # held-out tables; empty: split val_fraction off `train`
    val_fraction: float = 0.1
    caption_col: str = "caption"
    image_col: str = "image"
    slide_col: str = "slide"
    x_col: str = "x"
    y_col: str = "y"
    size_col: str = "size"
    level_col: str = "level"
    tile_size: int = 224  # region side for slide rows without a size column
    input_size: int | None = None  # train at this size instead of the encoder's own
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # stain normalisation of every image to one target (macenko|reinhard + an image/slide);
    # the fitted target is saved in the model folder, and tl.embed applies it at inference
    stain: str | None = None
    stain_target: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        if (self.stain is None) != (self.stain_target is None):
            raise ValueError("data.stain and data.stain_target go together")
        if self.stain is not None and self.stain not in ("macenko", "reinhard"):
            raise ValueError(f"data.stain must be macenko or reinhard, got {self.stain!r}")


class _Files:
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))


class _SlideRegions:
    def __init__(self, paths, xs, ys, sizes, levels) -> None:
        self.paths = list(paths)
        self.xs, self.ys = np.asarray(xs, np.int64), np.asarray(ys, np.int64)
        self.sizes, self.levels = np.asarray(sizes, np.int64), np.asarray(levels, np.int64)
        self._open: dict[str, Any] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}, "_pid": None}

    def read(self, i: int) -> np.ndarray:
        from mmpath.io import open_slide

        if self._pid != os.getpid():  # slide handles never cross processes
            self._open, self._pid = {}, os.getpid()
        path = self.paths[i]
        if path not in self._open:
            self._open[path] = open_slide(path)
        size = int(self.sizes[i])
        return self._open[path].read_region(
            (int(self.xs[i]), int(self.ys[i])), int(self.levels[i]), (size, size)
        )[..., :3]


class _Tiles:
    def __init__(self, reader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def read(self, i: int) -> np.ndarray:
        return self.reader.read_or_blank(i)[0]


class ImageTable:
    """Rows of pixels, with captions when the tables have them.

    Example
    -------
    >>> table = load_table(["pairs.csv"], TableConfig(), captions=True)
    >>> img, caption = table.read(0), table.captions[0]
    """

    stain = None  # a fitted StainTarget: every image is normalised to it when read

    def __init__(self, parts: list[Any], captions: list[str] | None) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.captions = captions

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, i: int) -> np.ndarray:
        """Row ``i`` as ``uint8 (H, W, 3)``."""
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        img = self.parts[k].read(i - int(self.offsets[k]))
        if self.stain is not None:
            img = _normalize_or_keep(img, self.stain)
        return img


def _normalize_or_keep(img: np.ndarray, target) -> np.ndarray:
    """``img`` normalised to ``target`` (its own stain fitted); a tile without enough stained
    tissue to fit (glass, a blank) has no stain to change and is kept as it is."""
    from mmpath.pp.stain import normalize_stain

    try:
        return normalize_stain(np.ascontiguousarray(img), target)
    except DataError:
        return img


def _read_frame(path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except Exception as err:  # noqa: BLE001 - pandas/pyarrow raise many types
        raise DataError(f"cannot read table {str(path)!r}: {err}") from None


def _check_exist(paths: list[str], what: str, table: Path) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3])
        raise DataError(
            f"{len(missing)} of {len(paths)} {what} in {str(table)!r} do not exist (e.g. {shown});"
            " relative paths are read from the table's folder: fix the paths or the files"
        )


def _captions(values, table: Path, col: str) -> list[str]:
    captions = [
        "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
        for v in values
    ]
    empty = sum(1 for c in captions if not c)
    if empty:
        raise DataError(
            f"{empty} of {len(captions)} rows of {str(table)!r} have an empty {col!r}; "
            "drop them or write a caption for each"
        )
    return captions


def _load_one(path: Path, cfg: TableConfig, captions: bool) -> tuple[Any, list[str] | None]:
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in _IMAGE_EXT)
        if not files:
            raise DataError(f"folder {str(path)!r} holds no image files ({', '.join(_IMAGE_EXT)})")
        if captions:
            raise DataError(
                f"{str(path)!r} is a folder of images without captions; give a table with a "
                f"{cfg.caption_col!r} column"
            )
        return _Files(files), None
    if not path.is_file():
        raise DataError(f"training table {str(path)!r} does not exist; check data.train/val")
    if path.suffix.lower() not in _TABLE_EXT:
        raise DataError(f"{str(path)!r}: tables must be one of {', '.join(_TABLE_EXT)}")
    if path.suffix.lower() == ".h5ad":
        from mmpath.io import TileReader, read_h5ad

        adata = read_h5ad(path)
        if adata.n_obs == 0:
            raise DataError(f"tile table {str(path)!r} has no rows")
        caps = None
        if captions:
            if cfg.caption_col not in adata.obs:
                raise DataError(
                    f"tile table {str(path)!r} has no obs column {cfg.caption_col!r} "
                    "(set data.caption_col)"
                )
            caps = _captions(adata.obs[cfg.caption_col].tolist(), path, cfg.caption_col)
        try:
            return _Tiles(TileReader(adata)), caps
        except MmpathError as err:
            raise DataError(f"{str(path)!r}: {err}") from None
    frame = _read_frame(path)
    if len(frame) == 0:
        raise DataError(f"table {str(path)!r} is empty; it needs one row per training image")
    caps = None
    if captions:
        if cfg.caption_col not in frame:
            raise DataError(
                f"table {str(path)!r} has no {cfg.caption_col!r} column (columns: "
                f"{', '.join(map(str, frame.columns))}); set data.caption_col"
            )
        caps = _captions(frame[cfg.caption_col].tolist(), path, cfg.caption_col)
    base = path.parent

    def resolve(p: Any) -> str:
        p = Path(str(p)).expanduser()
        return str(p if p.is_absolute() else base / p)

    if cfg.image_col in frame:
        files = [resolve(p) for p in frame[cfg.image_col]]
        _check_exist(files, "image files", path)
        return _Files(files), caps
    if cfg.slide_col in frame and cfg.x_col in frame and cfg.y_col in frame:
        slides = [resolve(p) for p in frame[cfg.slide_col]]
        _check_exist(sorted(set(slides)), "slide files", path)
        n = len(frame)
        sizes = frame[cfg.size_col] if cfg.size_col in frame else np.full(n, cfg.tile_size)
        levels = frame[cfg.level_col] if cfg.level_col in frame else np.zeros(n, np.int64)
        return _SlideRegions(slides, frame[cfg.x_col], frame[cfg.y_col], sizes, levels), caps
    raise DataError(
        f"table {str(path)!r} needs an image column {cfg.image_col!r} or slide coordinates "
        f"({cfg.slide_col!r}, {cfg.x_col!r}, {cfg.y_col!r}); set data.image_col or data.slide_col"
    )


def load_table(paths: Sequence[str], cfg: TableConfig, *, captions: bool) -> ImageTable:
    """Read every table in ``paths`` (checked up front) into one :class:`ImageTable`.

    Parameters
    ----------
    paths
        Tables (``.csv``, ``.tsv``, ``.parquet``, ``.h5ad``) or folders of images.
    cfg
        Column names and defaults.
    captions
        Require a caption per row (image-text training) or ignore captions (SSL).

    Example
    -------
    >>> table = load_table(["train.csv"], TableConfig(), captions=True)
    """
    if not paths:
        raise DataError("no training data: set data.train to one or more tables or folders")
    parts, caps = [], []
    for p in paths:
        part, c = _load_one(Path(p).expanduser(), cfg, captions)
        parts.append(part)
        if captions:
            caps.extend(c)
    table = ImageTable(parts, caps if captions else None)
    if cfg.stain is not None:
        from mmpath.pp.stain import fit_stain_target

        table.stain = fit_stain_target(cfg.stain_target, method=cfg.stain)
    return table


def export_stain(table: ImageTable, folder: Path) -> None:
    """Store the stain target ``table`` was normalised to (fitted once by :func:`load_table`)
    in a model folder, so ``tl.embed`` with that model normalises the same way."""
    if table.stain is not None:
        from mmpath.pp.stain import save_stain_target

        save_stain_target(table.stain, folder)


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random ``(train, val)`` row indices with ``round(n * fraction)`` val rows."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class ImageDataset:
    """Rows of an :class:`ImageTable` as normalised tensors, augmented per (epoch, row).

    Items for :class:`~mmpath.train.core.SampleKey` keys (training) are augmented with
    ``sample_rng(seed, epoch, row)``; plain ``int`` keys (validation) are only resized.
    ``views`` > 1 returns that many augmented views (self-supervised pairs). With captions
    an item is ``(image, caption)``, else ``(image,)`` or ``(view_1, ..., view_k)``.
    """

    def __init__(
        self,
        table: ImageTable,
        rows: np.ndarray,
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentConfig,
        seed: int = 0,
        views: int = 1,
        with_captions: bool = True,
    ) -> None:
        self.table, self.rows = table, np.asarray(rows, np.int64)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = Augment(augment, size)
        self.plain = Augment(AugmentConfig.none(), size)
        self.seed, self.views = seed, views
        self.with_captions = with_captions and table.captions is not None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> tuple:
        if isinstance(key, tuple):
            i, epoch = int(key[0]), int(key[1])
            row = int(self.rows[i])
            rng = sample_rng(self.seed, epoch, row)
            img = self.table.read(row)
            imgs = [
                to_tensor(self.augment(img, rng), self.mean, self.std) for _ in range(self.views)
            ]
        else:
            row = int(self.rows[int(key)])
            img = self.table.read(row)
            imgs = [to_tensor(self.plain(img, np.random.default_rng(0)), self.mean, self.std)]
        if self.with_captions:
            return imgs[0], self.table.captions[row]
        return tuple(imgs)
