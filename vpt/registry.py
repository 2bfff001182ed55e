"""One registry class for everything found by name: methods, backbone adapters, tasks.

A :class:`Registry` maps names to objects. Unknown names raise one :class:`~vpt.errors.UnknownNameError` listing
the valid names, with a "did you mean" when one is close. ``priority`` orders :meth:`Registry.values` (highest
first; equal priorities keep registration order), so that a user's backbone adapter registered with a higher
priority is asked before the built-in ones. ``builtins`` names modules imported on the first lookup (lazy
built-ins: a registry can be defined before the modules that fill it; one that fails to import raises its
ImportError, as a broken install should). ``get("pkg.module.attr")`` of a dotted name that is not registered
imports it, as Hydra's ``_target_``: a user's method or task module needs no registration call to be found.

This module imports nothing from vpt but the errors, so every other module can import it without cycles.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind (``kind`` is the noun in error messages, e.g. ``"prompt method"``)."""

    def __init__(self, kind: str, builtins: Iterable[str] = (), instantiate: bool = False) -> None:
        self.kind = kind
        self._builtins = tuple(builtins)
        self._loaded = not self._builtins
        self._entries: dict[str, tuple[T, int, int]] = {}  # name -> (object, priority, order)
        self._order = 0
        self._instantiate = instantiate  # a class found through a dotted name is instantiated (methods, tasks)

    # ---- registration ---------------------------------------------------------------------
    def register(self, obj: T, name: str | None = None, *, priority: int = 0, replace: bool = False) -> T:
        """Register ``obj`` under ``name`` (default: ``obj.name``, else its ``__name__``); returns ``obj``, so it
        can be used as a decorator. A name registered twice is refused unless ``replace=True``."""
        name = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not name:
            raise ValueError(f"{obj!r} has no name to register it under as a {self.kind}")
        if name in self._entries and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({self._entries[name][0]!r}); "
                             "pass replace=True to swap it")
        order = self._entries[name][2] if name in self._entries else self._next_order()
        self._entries[name] = (obj, priority, order)
        return obj

    def decorator(self, name: str | None = None, *, priority: int = 0, replace: bool = False) -> Callable[[T], T]:
        return lambda obj: self.register(obj, name, priority=priority, replace=replace)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    # ---- lookup ---------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a built-in module that looks a name up while it loads does not recurse
            try:
                for module in self._builtins:
                    importlib.import_module(module)
            except BaseException:
                # a built-in that cannot be imported is a broken install: its ImportError, not "unknown name", and
                # again on the next lookup
                self._loaded = False
                raise

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name][0]
        self._load_builtins()
        if name in self._entries:
            return self._entries[name][0]
        if isinstance(name, str) and "." in name:
            return self._import(name)
        raise self.unknown(name)

    def _import(self, target: str) -> T:
        module_name, _, attribute = target.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise UnknownNameError(self.kind, target, self.names(),
                                   hint=f"{target!r} is not an importable name ({error})") from None
        if self._instantiate and isinstance(obj, type):
            obj = obj()
        return obj

    def unknown(self, name: str) -> UnknownNameError:
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        return UnknownNameError(self.kind, name, self._entries, hint=f"did you mean {close[0]!r}?" if close else None)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        self._load_builtins()
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load_builtins()
        return [(name, entry[0]) for name, entry in self._entries.items()]

    def values(self) -> list[T]:
        """The objects by priority (highest first), then in registration order."""
        self._load_builtins()
        return [entry[0] for entry in sorted(self._entries.values(), key=lambda e: (-e[1], e[2]))]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

