"""Triton kernels under the interpreter, on CPU tensors.

``TRITON_INTERPRET=1`` must be set before triton is first imported (triton decorates its own
builtins at import), so these tests run in their own pytest process: ``make test`` does
``TRITON_INTERPRET=1 pytest tests/interpreter``.
"""

from __future__ import annotations

import os

import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if INTERPRETING:
        return
    skip = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 from process start: run `make test`")
    for item in items:
        if "tests/interpreter" in str(item.fspath):
            item.add_marker(skip)
