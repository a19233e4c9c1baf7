"""Lookup in the project's explicit registries (architectures, runtimes, stages, artifact kinds)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def by_name(entries: Iterable[T], name: str, what: str, error: Callable[[str], Exception] = KeyError,
            key: Callable[[T], str] = lambda e: e.name) -> T:  # type: ignore[attr-defined]
    """The entry whose ``key`` is ``name``, else ``error`` naming ``what`` and the known names."""
    entries = tuple(entries)
    for entry in entries:
        if key(entry) == name:
            return entry
    raise error(f"unknown {what} {name!r}; known: {', '.join(key(e) for e in entries)}")
