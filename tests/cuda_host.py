"""Checks shared by the CPU tests of the CuPy-compiled backends (``cuda_ampere``, ``cuda_volta``)."""

from __future__ import annotations

import re
from pathlib import Path


def kernel_params(csrc: Path, sources: tuple[str, ...], kernel: str) -> list[str]:
    """The C types of ``kernel``'s parameters, in order, as its source declares them."""
    text = "\n".join((csrc / name).read_text() for name in sources)
    signature = re.search(rf"\n{kernel}\((.*?)\)\s*\{{", text, re.S).group(1)
    return [" ".join(p.split()[:-1]) for p in signature.split(",")]


def check_arg_types(args: tuple, params: list[str]) -> None:
    """CuPy does not check arguments: each must have the C type of its parameter."""
    assert len(args) == len(params)
    for arg, param in zip(args, params, strict=True):
        if param.endswith("*") or param == "long long":
            assert type(arg) is int, param  # CuPy passes a Python int as a 64-bit integer
        elif param == "int":
            assert arg.dtype == "int32", param
        else:
            assert param == "float" and arg.dtype == "float32", param
