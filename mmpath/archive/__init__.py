"""Archives: many slides, one resumable per-slide job, run locally or on Ray or Dask.

Example
-------
>>> table = mm.archive.run("slides/", "archive/", encoder="uni", engine="ray")
>>> arc = mm.archive.open("archive/")
>>> mm.archive.status("archive/").state.value_counts()
"""

from mmpath.archive.config import (
    ArchiveConfig,
    EncoderConfig,
    EngineConfig,
    StagingConfig,
    TilingConfig,
    ZeroShotConfig,
    load_archive_config,
)
from mmpath.archive.run import run, status
from mmpath.archive.view import Archive
from mmpath.archive.view import open_archive as open  # noqa: A001 - the public name

__all__ = [
    "run",
    "open",
    "status",
    "Archive",
    "ArchiveConfig",
    "TilingConfig",
    "EncoderConfig",
    "ZeroShotConfig",
    "EngineConfig",
    "StagingConfig",
    "load_archive_config",
]
