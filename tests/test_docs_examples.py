"""The worked examples in ``docs/sparsity.md`` run as written (on the CPU: ``portable`` serves them), and
their gradients reach the inputs."""

from __future__ import annotations

import pathlib
import re

import torch

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "sparsity.md"


def _examples() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## Worked examples") : text.index("## Speed")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_bigbird_and_hash_examples_run():
    examples = _examples()
    assert len(examples) == 2
    bigbird = {}
    exec(compile(examples[0], "bigbird example", "exec"), bigbird)  # noqa: S102 (our own docs)
    assert bigbird["y"].shape == (1, 2048, 256) and bigbird["proj"].weight.grad.abs().sum() > 0
    hashed = {}
    exec(compile(examples[1], "hash example", "exec"), hashed)  # noqa: S102
    out, q = hashed["out"], hashed["q"]
    assert torch.isfinite(out).all() and q.grad is not None and q.grad.abs().sum() > 0
