"""Fake third-party distributions: a ``.dist-info`` with ``entry_points.txt`` and a module, on a path."""

from __future__ import annotations

import textwrap
from pathlib import Path

GOOD = """
import portattn
from portattn.backends.portable import tiled


class {cls}(portattn.Backend):
    name = "{name}"
    priority = {priority}
    capabilities = portattn.Capabilities(devices=frozenset({{"cpu"}}), features=frozenset({{"causal", "lse"}}))

    def forward(self, call, q, k, v):
        out, lse = tiled.forward(call, q, k, v, 64, 64)
        return out * {factor}, lse


@portattn.hookimpl
def portattn_backends():
    return [{cls}()]
"""

BROKEN_IMPORT = """
import portattn_vendor_library_that_is_missing  # noqa: F401
"""

RAISING_HOOK = """
import portattn


@portattn.hookimpl
def portattn_backends():
    raise RuntimeError("the vendor driver is too old")
"""


def make_dist(root: Path, dist: str, entry: str, module: str, source: str, version: str = "1.0") -> None:
    """Write module ``module`` and a distribution ``dist`` whose entry point ``entry`` names it."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[portattn]\n{entry} = {module}\n")


def good(name: str, priority: int = 500, factor: float = 1.0, cls: str = "FakeBackend") -> str:
    return GOOD.format(name=name, priority=priority, factor=factor, cls=cls)
