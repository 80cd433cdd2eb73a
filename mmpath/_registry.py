"""A small generic registry: name -> factory, the timm way.

Registries hold factory functions (``encoders``, ``heads``...). Entries carry free-form
metadata (a frozen config object) so listing needs no construction.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mmpath.errors import ModelError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry:
    """One registered factory and the metadata it was registered with."""

    name: str
    factory: Callable[..., Any]
    meta: Any = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


class Registry(Generic[F]):
    """Mapping of names to factories with a ``register`` decorator.

    Parameters
    ----------
    kind
        What the registry holds, used in error messages ("encoder", "head").

    Example
    -------
    >>> heads = Registry("head")
    >>> @heads.register("linear")
    ... def linear(dim=4):
    ...     return dim
    >>> heads.create("linear", dim=8)
    8
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, *, meta: Any = None, aliases: tuple[str, ...] = ()
    ) -> Callable[[F], F]:
        """Decorator registering ``factory`` under ``name`` (and ``aliases``)."""

        def deco(factory: F) -> F:
            if name in self._entries or name in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, factory, meta, tuple(aliases))
            for alias in aliases:
                self._aliases[alias] = name
            return factory

        return deco

    def resolve(self, name: str) -> str:
        """Canonical name for ``name`` or an alias of it."""
        return self._aliases.get(name, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Entry:
        """The entry for ``name``; raises :class:`~mmpath.errors.ModelError` if unknown."""
        key = self.resolve(name)
        if key not in self._entries:
            close = [n for n in self._entries if name.lower() in n.lower()][:5]
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ModelError(
                f"unknown {self.kind} {name!r}.{hint} Run `mmpath list` to see what is registered."
            )
        return self._entries[key]

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Call the factory registered under ``name``."""
        return self.get(name).factory(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``."""
        return [n for n in self if fnmatch.fnmatch(n, pattern)]

    def table(self, pattern: str = "*") -> list[dict[str, Any]]:
        """One dict per entry (name, aliases and the metadata's public fields)."""
        rows = []
        for name in self.list(pattern):
            entry = self._entries[name]
            row: dict[str, Any] = {"name": name, "aliases": ",".join(entry.aliases)}
            meta = entry.meta
            if meta is not None:
                fields = getattr(meta, "__dataclass_fields__", None)
                items = {k: getattr(meta, k) for k in fields} if fields else dict(vars(meta))
                row.update({k: v for k, v in items.items() if not k.startswith("_")})
            rows.append(row)
        return rows
