"""Tile streaming and model-specific preprocessing for :func:`mmpath.tl.embed`.

Torch is imported inside functions only (``import mmpath`` stays torch-free).

Preprocessing, from the encoder's :class:`~mmpath.models.base.DataConfig`:

1. When the tile's effective mpp (``uns`` tiling provenance, ``mpp_effective``) and the
   encoder's mpp are both known and differ by more than :data:`MPP_TOLERANCE`, the tile is
   resampled to the encoder's mpp (``size * mpp_tile / mpp_encoder`` px), so tissue reaches
   the model at the magnification it was trained at.
2. The result is brought to ``input_size``: a centre crop when it is larger (the field of view
   shrinks but the magnification stays right), a resize when it is smaller (the model needs
   its input size; a warning says the magnification is then off). Without a known mpp on
   either side, step 1 is skipped and the tile is resized to ``input_size``.
3. ``uint8 HWC -> float CHW`` in ``[0, 1]``, then ``(x - mean) / std``.

Resizing runs on uint8 tensors with antialiasing (torchvision's fast path) in the reader
processes, so the main process only runs the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmpath._fork import worker_start_method
from mmpath.errors import MmpathError
from mmpath.io import _prov
from mmpath.io.slide import ArraySlide, Slide, open_slide
from mmpath.io.tiles import Remap, TileReader

log = logging.getLogger(__name__)

MPP_TOLERANCE = 0.03  # relative mpp difference treated as "the same magnification"


@dataclass(frozen=True)
class Preprocess:
    """Picklable per-slide preprocessing: tile ``size`` px -> model input tensor."""

    size: int  # tile side in the table
    resize_to: int | None  # side after the resampling step (None: no resize)
    crop_to: int | None  # centre crop side (None: no crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    stain: Any = None  # a picklable mm.pp.StainNormalizer applied to the uint8 tile first

    def __call__(self, img: np.ndarray):
        from torchvision.transforms.v2 import functional as F

        from mmpath.models.transform import normalize, scale, to_chw

        if self.stain is not None:
            img = self.stain(img)
        x = to_chw(img)
        if self.resize_to is not None:
            x = F.resize(
                x,
                [self.resize_to, self.resize_to],
                interpolation=_interp(self.interpolation),
                antialias=True,
            )
        if self.crop_to is not None:
            x = F.center_crop(x, [self.crop_to, self.crop_to])
        return normalize(scale(x), self.mean, self.std)

    def describe(self) -> dict[str, Any]:
        out = {"tile_size": self.size, "resize_to": self.resize_to, "crop_to": self.crop_to}
        if self.stain is not None:
            out["stain_source"] = self.stain.source.to_dict()
        return out


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name.lower())
    except ValueError:
        return InterpolationMode.BICUBIC


def plan_preprocess(
    tile_size: int, tile_mpp: float | None, data, *, slide_id: str = ""
) -> Preprocess:
    """The :class:`Preprocess` taking ``tile_size`` px tiles at ``tile_mpp`` to ``data``.

    ``data`` is the encoder's ``DataConfig``.
    """
    target = int(data.input_size)
    resize_to: int | None = None
    crop_to: int | None = None
    enc_mpp = data.mpp
    if tile_mpp and enc_mpp:
        same = abs(tile_mpp / enc_mpp - 1) <= MPP_TOLERANCE
        scaled = tile_size if same else max(1, round(tile_size * tile_mpp / enc_mpp))
        if scaled >= target:
            resize_to = None if scaled == tile_size else scaled
            crop_to = target if scaled > target else None
        else:
            resize_to = target
            # A few per cent off (e.g. 55 µm Visium spots for a 56 µm input) is routine.
            level = logging.WARNING if target / scaled > 1.1 else logging.INFO
            log.log(
                level,
                "slide %r: a %d px tile at %.3g µm/px covers %d px at the encoder's %.3g µm/px, "
                "less than its %d px input; tiles are upsampled (magnification off by %.2fx). "
                "Tile with a larger size to avoid this.",
                slide_id,
                tile_size,
                tile_mpp,
                scaled,
                enc_mpp,
                target,
                target / scaled,
            )
    elif tile_size != target:
        resize_to = target
    return Preprocess(
        size=int(tile_size),
        resize_to=resize_to,
        crop_to=crop_to,
        mean=tuple(float(v) for v in data.mean),
        std=tuple(float(v) for v in data.std),
        interpolation=str(data.interpolation),
    )


def slide_preprocess(tiles, slide_id: str, data, *, stain=None) -> Preprocess:
    """The preprocessing of one slide's tiles, from the table's tiling provenance.

    ``stain`` is the slide's :class:`~mmpath.pp.StainNormalizer` (see :func:`slide_stain`).
    """
    t = _prov.tiling(tiles, slide_id)
    eff = t.get("mpp_effective")
    if eff is None and getattr(data, "mpp", None):
        # The mpp rule (mmpath/io/_mpp.py): say what is assumed, never silently.
        log.warning(
            "slide %r was tiled without a known mpp: its tiles are resized to the encoder's "
            "input as they are, at an unknown magnification (the encoder expects %.3g µm/px); "
            "give the slide's mpp when tiling (mpp= / --slide-mpp, or --estimate-mpp)",
            slide_id,
            data.mpp,
        )
    prep = plan_preprocess(
        int(t["size"]), None if eff is None else float(eff), data, slide_id=slide_id
    )
    return prep if stain is None else dataclasses.replace(prep, stain=stain)


def slide_stain(tiles, slide_id: str, target, *, slide: Slide | None, remap: Remap):
    """The stain normaliser of one slide to ``target`` (its source fitted once), or None."""
    if target is None:
        return None
    from mmpath.pp.stain import StainTarget, stain_normalizer

    if not isinstance(target, StainTarget):
        target = StainTarget.from_dict(target)
    if slide is not None:
        return stain_normalizer(slide, target)
    from mmpath.io.tiles import open_slide_from

    with open_slide_from(tiles, slide_id, remap=remap) as opened:
        return stain_normalizer(opened, target)


class EmbedDataset:
    """Map-style dataset: item ``i`` -> ``(input tensor, i, ok)``; torch-free until called.

    ``ok`` is False when the region was damaged (the tile is read as white). Unlike
    :class:`mmpath.io.TileDataset`, the flag travels with the item, so it survives worker
    processes.
    """

    def __init__(
        self, tiles, transform: Preprocess, *, slide: Slide | None = None, remap: Remap = None
    ) -> None:
        self.reader = TileReader(tiles, slide=slide, remap=remap)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        img, ok = self.reader.read_or_blank(int(i))
        return self.transform(img), int(i), bool(ok)


class PackedDataset(EmbedDataset):
    """Tiles of several small slides (same tile size) as one stream, each item preprocessed
    with its own slide's :class:`Preprocess`, so batches span slides. A slide's handle is
    closed once the stream moves past it (items arrive in slide order in each process)."""

    def __init__(self, tiles, transforms: dict[str, Preprocess], *, remap: Remap = None) -> None:
        self.reader = TileReader(tiles, remap=remap)
        self.transforms = transforms
        self._last: str | None = None

    def __getitem__(self, i: int):
        sid = str(self.reader.slide_ids[int(i)])
        if self._last is not None and sid != self._last:
            old = self.reader._open.pop(self._last, None)
            if old is not None:
                old.close()
        self._last = sid
        img, ok = self.reader.read_or_blank(int(i))
        return self.transforms[sid](img), int(i), bool(ok)


MIN_BATCHES_FOR_WORKERS = 4


def useful_workers(num_workers: int, n_batches: int) -> int:
    """Reader processes worth starting for ``n_batches`` batches: none below
    :data:`MIN_BATCHES_FOR_WORKERS` (starting workers costs more than reading a few batches
    in this process, and they are started afresh for every slide)."""
    return num_workers if n_batches >= MIN_BATCHES_FOR_WORKERS else 0


def pack_slides(sizes: list[tuple[str, int, int]], batch_size: int, chunk: int) -> list[list[str]]:
    """Groups of slide ids, in order: consecutive slides with fewer than ``batch_size`` tiles
    and the same tile size are packed together (up to ``chunk`` tiles), every other slide is
    a group of its own. ``sizes`` is ``[(slide_id, n_tiles, tile_px), ...]``."""
    groups: list[list[str]] = []
    cur: list[str] = []
    cur_n, cur_px = 0, None
    for sid, n, px in sizes:
        if n >= batch_size:
            if cur:
                groups.append(cur)
                cur, cur_n, cur_px = [], 0, None
            groups.append([sid])
            continue
        if cur and (px != cur_px or cur_n + n > chunk):
            groups.append(cur)
            cur, cur_n = [], 0
        cur.append(sid)
        cur_n += n
        cur_px = px
    if cur:
        groups.append(cur)
    return groups


def forward_batches(
    loader, model, device
) -> Iterator[tuple[np.ndarray, np.ndarray, Any, np.ndarray]]:
    """Run the image tower over a DataLoader: ``(rows, features, projections, ok)`` per batch."""
    import torch

    cuda = device.type == "cuda"
    autocast = (
        torch.autocast(
            "cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        )
        if cuda
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast, worker_errors_unwrapped():
        for x, idx, ok in loader:
            x = x.to(device, non_blocking=cuda)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model.encode_image(x)
            feats = out.features.float().cpu().numpy()
            proj = None if out.proj is None else out.proj.float().cpu().numpy()
            yield idx.numpy(), feats, proj, ok.numpy().astype(bool)


def embed_packed(sub, group: list[str], model, batch_size: int, workers: int, device, remap):
    """Embed the tiles of several small slides (``sub``: their rows) in shared batches:
    ``(rows, features, projections, ok, {slide_id: preprocessing})`` per batch."""
    preps = {s: slide_preprocess(sub, s, model.info.data) for s in group}
    desc = {s: p.describe() for s, p in preps.items()}
    batches = batches_of(0, sub.n_obs, batch_size)
    loader = make_loader(
        PackedDataset(sub, preps, remap=remap),
        batches,
        num_workers=useful_workers(workers, len(batches)),
        pin_memory=device.type == "cuda",
    )
    for idx, f, p, o in forward_batches(loader, model, device):
        yield idx, f, p, o, desc


def worker_init(worker_id: int) -> None:
    """Give each reader process its own slide handle (openslide handles must not cross)."""
    import torch

    info = torch.utils.data.get_worker_info()
    reader: TileReader = info.dataset.reader
    given = reader._given
    if given is not None and given.path is not None and not isinstance(given, ArraySlide):
        mpp = given.mpp if given.mpp_source in ("override", "estimate") else None
        reader._given = open_slide(
            given.path, mpp=mpp, slide_id=given.slide_id, backend=given.backend
        )


def make_loader(
    dataset: EmbedDataset, batches: list[list[int]], *, num_workers: int, pin_memory: bool = False
):
    """A DataLoader yielding the given batches in order, reading ahead in workers."""
    import torch

    kwargs: dict[str, Any] = {}
    in_memory = dataset.reader._given is not None and dataset.reader._given.path is None
    method = worker_start_method() if num_workers > 0 else None
    if in_memory and method != "fork":
        num_workers = 0  # an in-memory slide only reaches workers by fork
    if num_workers > 0:
        # fork unless other libraries' threads make it unsafe (see mmpath._fork)
        kwargs.update(worker_init_fn=worker_init, prefetch_factor=2, multiprocessing_context=method)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``range(n)`` in chunks."""
    return [(s, min(n, s + chunk_size)) for s in range(0, n, chunk_size)]


def batches_of(start: int, stop: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(stop, s + batch_size))) for s in range(start, stop, batch_size)]


def round_chunk(chunk_size: int, batch_size: int) -> int:
    """Chunks hold whole batches, so a resumed run feeds the model the same batches."""
    return max(1, math.ceil(chunk_size / batch_size)) * batch_size


@contextlib.contextmanager
def worker_errors_unwrapped():
    """Re-raise an mmpath error from a DataLoader worker with its own one-line message.

    torch re-raises worker exceptions as the same class but with the worker's whole traceback
    as the message, which would reach the user as a 30-line "one-line" error.
    """
    try:
        yield
    except MmpathError as err:
        text = str(err)
        if "Original Traceback" not in text:
            raise
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        name = f"{type(err).__module__}.{type(err).__qualname__}: "
        raise type(err)(last.split(name, 1)[-1]) from None
