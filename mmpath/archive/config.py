"""The archive run configuration: frozen dataclasses, loaded from YAML like every mmpath config.

Two parts of it decide what a slide's table *is* and are fingerprinted per slide:

* ``tiling`` (tile size, target mpp or level, overlap, min tissue, the tissue detector's mpp):
  a table made with other values is another table. An archive folder remembers the tiling it
  was made with (``archive.json``); a run asking for another tiling into the same folder is
  refused (:class:`~mmpath.errors.ArchiveError`) unless ``overwrite=True`` (CLI
  ``--overwrite``), which redoes every slide with the new tiling.
* each encoder (name, weights and the weights file's size/mtime) and the zero-shot classes:
  a slide whose table lacks an encoder, or holds it from other weights, is embedded with that
  encoder only; its tiles and the other embeddings are kept.

The rest (engine, workers, batch size, staging) says *how* to run and never changes which
slides count as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mmpath.config import from_dict, load_config, to_dict

__all__ = [
    "ArchiveConfig",
    "TilingConfig",
    "EncoderConfig",
    "ZeroShotConfig",
    "EngineConfig",
    "StagingConfig",
    "load_archive_config",
]


@dataclass(frozen=True)
class TilingConfig:
    """How slides become tiles (:func:`mmpath.pp.detect_tissue` + :func:`mmpath.pp.tile`)."""

    size: int = 224
    mpp: float | None = 0.5  # target µm/px of the tiles; None (and level None) = level 0
    level: int | None = None  # tile at this pyramid level instead of a target mpp
    overlap: int = 0
    min_tissue: float = 0.5
    tissue_mpp: float = 8.0  # resolution of tissue detection

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"tiling.size must be > 0, got {self.size}")
        if self.mpp is not None and self.level is not None:
            raise ValueError("give tiling.mpp or tiling.level, not both")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"tiling.min_tissue must be within 0..1, got {self.min_tissue}")


@dataclass(frozen=True)
class EncoderConfig:
    """One encoder to embed every tile with (a registry name, as in ``mmpath embed``)."""

    name: str
    weights: str | None = None
    key_added: str | None = None


@dataclass(frozen=True)
class ZeroShotConfig:
    """Optional zero-shot classes, scored with an image-text encoder of the run."""

    classes: tuple[str, ...] = ()
    encoder: str | None = None  # default: the first encoder
    key_added: str = "zs"
    templates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Where the per-slide jobs run."""

    name: Literal["local", "ray", "dask"] = "local"
    address: str | None = None  # an existing Ray / Dask cluster; None starts a local one
    workers: int | None = None  # model processes; None: one per GPU, else cpus // 2 (>= 1)
    reader_workers: int | None = None  # decode processes per model process (DataLoader);
    # None: on GPUs the spare cores split between the workers (up to 8 each), on the CPU 0
    batch_size: int = 64
    device: str | None = None  # None: one GPU per worker when CUDA is there, else the CPU
    torch_threads: int | None = None  # CPU threads per worker; None: cpus // workers
    connect_timeout: float = 10.0  # seconds to reach a cluster address before giving up

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"engine.workers must be >= 0, got {self.workers}")
        if self.batch_size <= 0:
            raise ValueError(f"engine.batch_size must be > 0, got {self.batch_size}")


@dataclass(frozen=True)
class StagingConfig:
    """Copy slides to a fast local folder ahead of the workers (slow network storage)."""

    dir: str | None = None
    max_gb: float = 20.0  # bound on the staged bytes at any time
    ahead: int = 4  # slides staged ahead of the running ones (at most)


@dataclass(frozen=True)
class ArchiveConfig:
    """A whole archive run (``configs/archive.yaml``).

    Example
    -------
    >>> cfg = load_archive_config("configs/archive.yaml", ["tiling.size=256"])
    """

    tiling: TilingConfig = field(default_factory=TilingConfig)
    encoders: tuple[EncoderConfig, ...] = ()
    zero_shot: ZeroShotConfig | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    staging: StagingConfig = field(default_factory=StagingConfig)
    slide_mpp: float | None = None  # level-0 µm/px for every slide (a CSV `mpp` column wins)
    hash_inputs: bool = False  # also compare a sha256 of each slide file, not only size+mtime
    stale_lock_seconds: float = 600.0  # a lock not refreshed for this long is taken over
    retry_failed: bool = False
    thumbnails: bool = True  # draw thumbs/<slide_id>.jpg: the tile grid over the thumbnail

    def __post_init__(self) -> None:
        ids = [encoder_id(e) for e in self.encoders]
        if len(set(ids)) != len(ids):
            raise ValueError(f"an encoder is listed twice ({ids}); give one a key_added")
        if self.zero_shot is not None and self.zero_shot.classes and not self.encoders:
            raise ValueError("zero_shot needs an image-text encoder in `encoders`")


def _normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``encoders: [uni, {name: conch, weights: ...}]`` (a bare name is a mapping)."""
    data = dict(data)
    encs = data.get("encoders")
    if isinstance(encs, (str, Mapping)):
        encs = [encs]
    if encs is not None and not isinstance(encs, (str, bytes)):
        with contextlib.suppress(TypeError):
            data["encoders"] = [{"name": e} if isinstance(e, str) else e for e in encs]
    return data


def archive_config(data: Mapping[str, Any] | None = None) -> ArchiveConfig:
    """An :class:`ArchiveConfig` from a (nested) mapping; unknown keys raise ConfigError."""
    return from_dict(ArchiveConfig, _normalise(data or {}))


def load_archive_config(path: str | os.PathLike[str] | None = None, overrides=()) -> ArchiveConfig:
    """Load ``configs/archive.yaml``-style YAML plus dotted overrides.

    Example
    -------
    >>> cfg = load_archive_config("configs/archive.yaml", ["engine.name=dask"])
    """
    return load_config(ArchiveConfig, path, overrides, prepare=_normalise)


def with_overrides(cfg: ArchiveConfig, parts: Mapping[str, Any]) -> ArchiveConfig:
    """``cfg`` with dotted keys replaced (``{"engine.workers": 2}``); ``None`` values are kept
    from ``cfg``."""
    data = to_dict(cfg)
    for dotted, value in parts.items():
        if value is None:
            continue
        node = data
        *head, last = dotted.split(".")
        for h in head:
            if not isinstance(node.get(h), dict):
                node[h] = {}
            node = node[h]
        node[last] = value
    return archive_config(data)


# -- fingerprints ---------------------------------------------------------------------------


def encoder_id(enc: EncoderConfig) -> str:
    """How a slide's record names an encoder's embedding (``key_added``, else the name)."""
    return enc.key_added or enc.name


def _weights_stat(weights: str | None) -> list[int] | None:
    """Size and mtime of a weights file (or of a folder's files), so a file replaced under the
    same name counts as other weights."""
    if not weights:
        return None
    p = Path(str(weights).removeprefix("local-dir:")).expanduser()
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        sizes = [f.stat().st_size for f in files]
        return [sum(sizes), max((f.stat().st_mtime_ns for f in files), default=0)]
    return None


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def tiling_signature(cfg: ArchiveConfig) -> dict[str, Any]:
    """What decides the tiles of a slide (without the per-slide mpp, recorded per slide)."""
    return to_dict(cfg.tiling)


def encoder_signature(enc: EncoderConfig) -> dict[str, Any]:
    """What decides one encoder's embeddings of a given table."""
    return {"name": enc.name, "weights": enc.weights, "weights_stat": _weights_stat(enc.weights)}


def zero_shot_signature(cfg: ArchiveConfig) -> dict[str, Any] | None:
    zs = cfg.zero_shot
    if zs is None or not zs.classes:
        return None
    return {**to_dict(zs), "encoder": zs.encoder or cfg.encoders[0].name}


def resolved(cfg: ArchiveConfig, **engine: Any) -> ArchiveConfig:
    """``cfg`` with engine defaults made concrete (so every engine runs the same numbers)."""
    return replace(cfg, engine=replace(cfg.engine, **engine))
