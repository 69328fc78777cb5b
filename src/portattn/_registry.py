"""Backend registry on pluggy: built-ins, guarded lazy entry points, runtime registration.

Built-ins register through the same ``portattn_backends`` hook as third-party plugins. Entry points
of group ``portattn`` load on first use, each inside a guard: a plugin that fails to import, raises
in its hook, returns something that is not a backend, or reuses a taken name becomes a failure
record (origin + error) and nothing else breaks.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from portattn import hookspecs
from portattn.errors import PluginError

if TYPE_CHECKING:
    from portattn._backend import Backend, Capabilities

BUILTIN = "built-in"
RUNTIME = "runtime (register_backend)"
AUTOLOAD_OFF_ENV = "PORTATTN_DISABLE_PLUGIN_AUTOLOAD"
REQUIRED_METHODS = ("available", "reasons", "forward")
_versions = itertools.count(1)  # every change of any registry gets a new number (dispatch cache key)


@dataclass(frozen=True)
class BackendRecord:
    """One row of ``list_backends()``: a backend, or a plugin that failed to provide one."""

    name: str
    origin: str
    available: bool
    reason: str | None
    priority: int | None
    capabilities: Capabilities | None
    backend: Backend | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "available": self.available,
            "reason": self.reason,
            "priority": self.priority,
            "capabilities": self.capabilities.summary() if self.capabilities is not None else None,
            "description": getattr(self.backend, "description", ""),
        }


@dataclass
class _Entry:
    backend: Backend
    origin: str
    unavailable: str | None | bool = False  # False = not probed yet

    def unavailable_reason(self) -> str | None:
        if self.unavailable is False:
            try:
                self.unavailable = self.backend.available()
            except Exception as exc:  # a probe that crashes makes its backend unavailable, nothing more
                self.unavailable = f"availability check raised {type(exc).__name__}: {exc}"
        return self.unavailable  # type: ignore[return-value]


class Registry:
    """The backends known to this process, ordered by priority (highest first)."""

    def __init__(self, *, autoload: bool) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.entries: dict[str, _Entry] = {}
        self.failures: list[BackendRecord] = []
        self.version = next(_versions)
        self.ordered: list[_Entry] = []
        from portattn import backends as builtin

        self.pm.register(builtin, name="portattn.backends")
        self._collect(builtin, BUILTIN, "portattn.backends")
        if autoload:
            self._load_entry_points()
        self.pm.check_pending()

    def _fail(self, name: str, origin: str, error: str) -> None:
        self.failures.append(BackendRecord(name, origin, False, error, None, None))

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
            origin = f"{origin} (entry point {ep.name} = {ep.value})"
            try:
                module = ep.load()
                self.pm.register(module, name=f"entrypoint:{ep.name}")
            except Exception as exc:  # ImportError, OSError from vendor libraries, pluggy validation...
                self._fail(ep.name, origin, f"plugin failed to load: {type(exc).__name__}: {exc}")
                continue
            self._collect(module, origin, ep.name)

    def _collect(self, plugin: object, origin: str, label: str) -> None:
        impls = [i for i in self.pm.hook.portattn_backends.get_hookimpls() if i.plugin is plugin]
        if not impls:
            self._fail(label, origin, "plugin implements no portattn_backends hook")
            return
        try:
            result = list(impls[0].function() or [])
        except Exception as exc:
            self._fail(label, origin, f"portattn_backends() raised {type(exc).__name__}: {exc}")
            return
        for backend in result:
            try:
                self.add(backend, origin)
            except PluginError as exc:
                self._fail(str(getattr(backend, "name", "?")), origin, str(exc))

    def add(self, backend: Backend, origin: str) -> None:
        """Add one backend; ``PluginError`` if it is malformed or its name is taken."""
        name = getattr(backend, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{backend!r} from {origin} has no name")
        missing = [m for m in REQUIRED_METHODS if not callable(getattr(backend, m, None))]
        if missing or not isinstance(getattr(backend, "priority", None), int):
            raise PluginError(f"backend {name!r} from {origin} lacks {missing or ['an int priority']}")
        if name in self.entries:
            raise PluginError(
                f"duplicate backend name {name!r}: provided by {self.entries[name].origin} and by {origin}"
            )
        self.entries[name] = _Entry(backend, origin)
        self.ordered = sorted(self.entries.values(), key=lambda e: -e.backend.priority)
        self.version = next(_versions)

    def records(self) -> list[BackendRecord]:
        rows = []
        for entry in self.ordered:
            reason = entry.unavailable_reason()
            b = entry.backend
            rows.append(BackendRecord(b.name, entry.origin, reason is None, reason, b.priority, b.capabilities, b))
        return rows + self.failures


_lock = threading.Lock()
_registry: Registry | None = None


def get() -> Registry:
    """The process registry, built (and entry points loaded) on first use."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = Registry(autoload=os.environ.get(AUTOLOAD_OFF_ENV, "") in ("", "0"))
    return _registry


def reset() -> None:
    """Forget every backend and plugin; the next use reloads (tests, and after installing plugins)."""
    global _registry
    with _lock:
        _registry = None


def register_backend(backend: Backend) -> None:
    """Register a backend object at run time (SPEC §5). Raises if its name is already taken."""
    get().add(backend, RUNTIME)
