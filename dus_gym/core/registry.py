"""Name -> entry tables (tasks, methods, samplers, vec-env kinds), all of one shape.

An entry is an object (a class or a function) or a ``"package.module:attr"`` string that is imported
on first lookup, as Gymnasium's entry points are: a table can name what lives in a heavy or
optional module (a Ray env, an SB3 policy) without importing it, and the names are known to
the command line before anything is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from dus_gym.core.config import ConfigError, did_you_mean

T = TypeVar("T")


def load_entry_point(path: str) -> Any:
    """The object named by ``"package.module:attr"`` (imported now); one clear error if it is not there."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"'{path}' is not of the form 'package.module:attr'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import '{path}': {err}") from err


class Registry(Generic[T]):
    """A table of named entries (objects or ``"module:attr"`` strings resolved lazily).

    Args:
        kind: what the entries are ("task", "method", "sampler", ...), for messages.
        entries: the initial table.
    """

    def __init__(self, kind: str, entries: dict[str, T | str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = dict(entries or {})

    def register(self, name: str, entry: T | str) -> None:
        """Add (or replace) ``name``: an object, or a ``"module:attr"`` string imported on first use."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if not isinstance(entry, str) and not callable(entry):
            raise TypeError(f"{self.kind} '{name}' must be callable or a 'module:attr' string, got {entry!r}")
        self._entries[name] = entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def unknown(self, name: str, extra: str = "") -> ConfigError:
        """The error for a name that is not registered (with the nearest name)."""
        return ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                           f"known: {sorted(self._entries)}{extra}")

    def get(self, name: str) -> T:
        """The entry of ``name`` (a string entry is imported now and kept)."""
        if name not in self._entries:
            raise self.unknown(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = load_entry_point(entry)
            self._entries[name] = entry
        return entry
