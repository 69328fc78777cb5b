"""The pluggy hook specification of portattn (project name and entry-point group ``portattn``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Iterable

    from portattn._backend import Backend

PROJECT = "portattn"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def portattn_backends() -> Iterable[Backend]:
    """Return the backend objects this plugin provides.

    Example, in a module named by an entry point of group ``portattn``::

        import portattn

        class MyBackend(portattn.Backend):
            name = "mine"
            ...

        @portattn.hookimpl
        def portattn_backends():
            return [MyBackend()]
    """
