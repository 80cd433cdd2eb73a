"""User-facing errors.

Every failure a user can cause raises a subclass of :class:`MmpathError` whose message says
what was wrong and what to do. The CLI prints ``str(err)`` on one line and exits 2; library
callers can catch the family they care about.
"""

from __future__ import annotations

__all__ = [
    "MmpathError",
    "SlideError",
    "TileReadError",
    "AnnotationError",
    "ConfigError",
    "WeightsError",
    "ModelError",
    "DataError",
    "IndexError_",
    "FilterError",
    "UnsafeNameError",
    "ArchiveError",
    "EngineError",
]


class MmpathError(Exception):
    """Base class of every error mmpath raises on purpose."""


class SlideError(MmpathError):
    """A slide cannot be opened, has bad metadata, or a request does not fit it."""


class TileReadError(SlideError):
    """Reading pixels from an otherwise valid slide failed (e.g. a corrupt tile)."""


class AnnotationError(MmpathError):
    """An annotation file does not parse or does not fit its slide."""


class ConfigError(MmpathError):
    """A run configuration is invalid (unknown keys, wrong types, bad values)."""


class WeightsError(MmpathError):
    """Model weights cannot be found offline, or do not match the model."""


class ModelError(MmpathError):
    """Unknown model name, or a model asked for something it cannot do."""


class DataError(MmpathError):
    """A table or data set is missing what a step needs (columns, embeddings, genes...)."""


class IndexError_(MmpathError):  # noqa: N801 - trailing underscore avoids the builtin
    """A search index is empty, corrupt, or does not match a query."""


class FilterError(IndexError_):
    """A ``where=`` filter is outside the safe filter language, or names an unknown column."""


class UnsafeNameError(MmpathError, ValueError):
    """A user-supplied name (model, slide id, key, output) is not one safe path component."""


class ArchiveError(MmpathError):
    """An archive folder, its inputs or its config do not fit the requested run."""


class EngineError(ArchiveError):
    """An execution engine (Ray, Dask) is not installed, or its cluster does not answer."""
