"""Backend selection: the highest-priority available backend with no reasons; overrides; explain.

Overrides, strongest first: the ``backend=`` argument, ``with use_backend(name):``, and the
``PORTATTN_BACKEND`` environment variable. The caller caches the decision per call signature.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from portattn import _call, _registry
from portattn.errors import NoBackendError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from portattn._backend import Backend
    from portattn._call import AttentionCall

BACKEND_ENV = "PORTATTN_BACKEND"
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("portattn_backend", default=None)


def forced_name(backend: str | None) -> str | None:
    """The backend name forced for this call by argument, context or environment (or None)."""
    if backend is not None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a backend name (str) or None, got {type(backend).__name__}")
        return backend
    return _forced.get() or os.environ.get(BACKEND_ENV) or None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls that pass no ``backend=`` use backend ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"use_backend takes a backend name, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def _candidate_reasons(entry: _registry._Entry, call: AttentionCall) -> list[str]:
    unavailable = entry.unavailable_reason()
    if unavailable is not None:
        return [f"unavailable: {unavailable}"]
    try:
        return list(entry.backend.reasons(call))
    except Exception as exc:  # a broken plugin check refuses the call rather than breaking dispatch
        return [f"reasons() raised {type(exc).__name__}: {exc}"]


def _format(call: AttentionCall, table: dict[str, list[str]], head: str) -> str:
    lines = [head, f"  call: {call.describe()}"]
    for name, reasons in table.items():
        lines.append(f"  {name}: " + ("; ".join(reasons) if reasons else "ok"))
    return "\n".join(lines)


def call_priority(backend: Backend, call: AttentionCall) -> int:
    """``backend.priority_for(call)``; a plugin object that does not subclass Backend ranks by ``priority``."""
    priority_for = getattr(backend, "priority_for", None)
    return backend.priority if priority_for is None else priority_for(call)


def ranked(call: AttentionCall) -> list[_registry._Entry]:
    """The registered backends, highest priority for ``call`` first (ties keep the registry's order)."""
    return sorted(_registry.get().ordered, key=lambda e: -call_priority(e.backend, call))


def select(call: AttentionCall, forced: str | None) -> Backend:
    """The backend that serves ``call``; ``NoBackendError`` listing every reason if none can."""
    reg = _registry.get()
    if forced is not None:
        entry = reg.entries.get(forced)
        if entry is None:
            failed = [f for f in reg.failures if f.name == forced]
            why = f" ({failed[0].reason})" if failed else ""
            raise NoBackendError(
                f"backend {forced!r} is not registered{why}; known backends: {', '.join(reg.entries)}",
                {forced: ["not registered"]},
            )
        reasons = _candidate_reasons(entry, call)
        if reasons:
            raise NoBackendError(
                _format(call, {forced: reasons}, f"backend {forced!r} cannot serve this call"), {forced: reasons}
            )
        return entry.backend
    order = ranked(call)
    for entry in order:
        if not _candidate_reasons(entry, call):
            return entry.backend
    table = {e.backend.name: _candidate_reasons(e, call) for e in order}
    raise NoBackendError(_format(call, table, "no backend can serve this call"), table)


FP8_FALLBACK = "no backend has an FP8 backward: inputs that require grad run in the input dtype"


def select_call(call: AttentionCall, forced: str | None) -> tuple[AttentionCall, Backend]:
    """``select``, except that ``precision="fp8"`` with inputs that require grad falls back to the input
    dtype (SPEC §4: FP8 is forward-only) when no backend can serve it as asked. Returns the call that
    will run."""
    try:
        return call, select(call, forced)
    except NoBackendError:
        if forced is not None or _call.FP8 not in call.features or _call.BACKWARD not in call.features:
            raise
        fallback = call.without_fp8()
        return fallback, select(fallback, forced)


@dataclass(frozen=True)
class ExplainRow:
    name: str
    origin: str
    available: bool
    priority: int | None
    reasons: list[str]
    chosen: bool


@dataclass(frozen=True)
class Explanation:
    """What ``explain()`` found: one row per backend, the chosen one, and the call."""

    call: AttentionCall
    rows: list[ExplainRow]
    chosen: str | None
    forced: str | None
    error: str | None
    note: str | None = None

    def __str__(self) -> str:
        lines = [f"call: {self.call.describe()}"]
        if self.forced:
            lines.append(f"forced backend: {self.forced}")
        if self.note:
            lines.append(f"note: {self.note}")
        width = max([len(r.name) for r in self.rows] + [7])
        lines.append(f"   {'backend':<{width}}  {'prio':>4}  status")
        for r in self.rows:
            mark = "=>" if r.chosen else "  "
            prio = "" if r.priority is None else str(r.priority)
            status = "chosen" if r.chosen else ("ok" if not r.reasons else "; ".join(r.reasons))
            lines.append(f"{mark} {r.name:<{width}}  {prio:>4}  {status}")
        lines.append(f"chosen: {self.chosen}" if self.chosen else f"no backend chosen: {self.error}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "call": self.call.describe(),
            "chosen": self.chosen,
            "forced": self.forced,
            "error": self.error,
            "note": self.note,
            "backends": [r.__dict__ for r in self.rows],
        }


def explanation(call: AttentionCall, forced: str | None) -> Explanation:
    reg = _registry.get()
    note = None
    try:
        ran, backend = select_call(call, forced)
        chosen: str | None = backend.name
        error = None
        if ran is not call:
            note, call = FP8_FALLBACK, ran
    except NoBackendError as exc:
        chosen, error = None, str(exc).splitlines()[0]
    if _call.KV_OFFLOAD in call.features:
        from portattn import _offload

        budget = _offload.budget_bytes()
        note = (
            f"KV offload: k, v stream from host memory in chunks of {_offload.chunk_keys(call, budget)} keys "
            f"(device budget {budget / 2**20:.0f} MiB for two chunk buffers; set by portattn.kv_budget "
            f"or {_offload.BUDGET_ENV})"
        )
    rows = []
    for entry in ranked(call):
        b = entry.backend
        reasons = _candidate_reasons(entry, call)
        if forced is not None and b.name != forced:
            reasons = reasons + [f"not the forced backend {forced!r}"]
        available = entry.unavailable_reason() is None
        rows.append(ExplainRow(b.name, entry.origin, available, call_priority(b, call), reasons, b.name == chosen))
    for failure in reg.failures:
        rows.append(ExplainRow(failure.name, failure.origin, False, None, [failure.reason or ""], False))
    return Explanation(call, rows, chosen, forced, error, note)
