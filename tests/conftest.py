"""Test set-up: no third-party plugins leak in, outputs are poisoned, GPU tests skip with a reason."""

from __future__ import annotations

import os

os.environ.setdefault("PORTATTN_DISABLE_PLUGIN_AUTOLOAD", "1")  # tests register what they use
os.environ.setdefault("PORTATTN_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import portattn._registry as registry  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    is_hopper = has_cuda and torch.cuda.get_device_capability() >= (9, 0)
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (run scripts/gpu.sh)"))
        if "hopper" in item.keywords and not is_hopper:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU of compute capability 9.0+"))


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """A registry rebuilt for this test (built-ins only unless the test enables autoload), reset after."""
    monkeypatch.setenv("PORTATTN_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("PORTATTN_BACKEND", raising=False)
    registry.reset()
    yield registry
    registry.reset()
