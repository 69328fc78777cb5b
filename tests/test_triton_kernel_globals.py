"""Triton's compiler refuses module globals inside ``@triton.jit`` functions unless they are
``tl.constexpr``; the interpreter that CI runs does not. Catch such a use on the CPU."""

from __future__ import annotations

import ast
from pathlib import Path

import portattn.backends.triton_hopper as triton_hopper

KERNEL_FILES = sorted(Path(triton_hopper.__file__).parent.glob("kernels*.py"))


def _jit_functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            yield node


def _plain_globals(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and not ast.unparse(node.value).startswith(("tl.constexpr", "triton.")):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_kernels_use_no_plain_globals():
    assert KERNEL_FILES
    for path in KERNEL_FILES:
        tree = ast.parse(path.read_text())
        plain = _plain_globals(tree)
        for fn in _jit_functions(tree):
            used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            assert not used & plain, f"{path.name}:{fn.name} reads module globals {sorted(used & plain)}"


def test_the_check_sees_a_plain_global():
    tree = ast.parse("X = 2.0\n@triton.jit\ndef k(a):\n    return a * X\n")
    fn = next(_jit_functions(tree))
    assert "X" in _plain_globals(tree) and any(isinstance(n, ast.Name) and n.id == "X" for n in ast.walk(fn))
