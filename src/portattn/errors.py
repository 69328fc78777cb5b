"""Exceptions raised by portattn."""

from __future__ import annotations


class NoBackendError(RuntimeError):
    """No backend can serve a call (or the forced one cannot).

    The message lists every backend considered with the reasons it refused the call.
    ``reasons`` holds the same as ``{backend name: [reason, ...]}``.
    """

    def __init__(self, message: str, reasons: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.reasons = dict(reasons or {})


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered (reported, never raised at import)."""
