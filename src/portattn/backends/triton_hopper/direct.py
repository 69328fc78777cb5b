"""Launching an already compiled kernel again without ``JITFunction.run``, and descriptors without
re-validation: the host's share of a call at short sequences.

At seqlen 1k a forward's GPU work takes 0.15-0.35 ms on an H100. ``JITFunction.run`` binds and
specializes every argument again on each launch (20-50 us measured on a lent H100 host, against
15-23 us for the compiled launcher alone), and each descriptor re-runs its checks (3-6 us). Four
launches per training step made the host, not the GPU, set the speed there.

A caller passes a ``key`` that fixes every value Triton specializes on (shapes, strides, dtypes,
pointer alignment, the config); the first launch under that key goes through Triton and keeps the
compiled kernel, later ones hand the arguments straight to the compiled launcher. Triton 3.6 and
3.9 call that launcher the same way (``CompiledKernel.run(grid, stream, function, metadata, launch
metadata, hooks, *arguments in parameter order)``). ``PORTATTN_TRITON_DIRECT=0`` turns it off, and
it steps aside whenever Triton's launch hooks or pre-run hooks are set (profilers rely on them).
"""

from __future__ import annotations

import os
from typing import Any

import triton
from triton import knobs

DIRECT_ENV = "PORTATTN_TRITON_DIRECT"
_LIMIT = 1024  # compiled kernels kept (each key is one call signature)
_kernels: dict[tuple, Any] = {}  # keyed by id(fn): the kernels are module-level functions, never freed
_defaults: dict[int, dict[str, Any]] = {}


def _no_hook(hook: Any) -> bool:
    """Nothing to call: None, or Triton's ``HookChain`` (3.6 on) with no hook in it."""
    return not getattr(hook, "calls", hook)


def _allowed(fn: Any) -> bool:
    return (
        os.environ.get(DIRECT_ENV, "") != "0"
        and _no_hook(knobs.runtime.launch_enter_hook)
        and _no_hook(knobs.runtime.launch_exit_hook)
        and not getattr(fn, "pre_run_hooks", None)
    )


def _parameter_defaults(fn: Any) -> dict[str, Any]:
    found = _defaults.get(id(fn))
    if found is None:
        found = {p.name: p.default for p in fn.signature.parameters.values() if p.default is not p.empty}
        _defaults[id(fn)] = found
    return found


def launch(fn: Any, grid: tuple[int, ...], key: tuple | None, *args: Any, **kwargs: Any) -> None:
    """``fn[grid](*args, **kwargs)``; with a ``key`` seen before, the compiled kernel is launched directly.

    ``key`` must determine everything Triton specializes the kernel on; None launches through Triton."""
    if key is None or os.environ.get("TRITON_INTERPRET", "") not in ("", "0") or not _allowed(fn):
        fn[grid](*args, **kwargs)
        return
    driver = triton.runtime.driver.active
    device = driver.get_current_device()
    full_key = (id(fn), device, key)  # a JITFunction's own hash goes through a lock and its source hash
    kernel = _kernels.get(full_key)
    if kernel is None:
        kernel = fn[grid](*args, **kwargs)
        if hasattr(kernel, "run") and hasattr(kernel, "function") and not hasattr(kernel, "result"):
            if len(_kernels) >= _LIMIT:
                _kernels.clear()
            _kernels[full_key] = kernel
        return
    names = fn.arg_names
    values = list(args)
    if len(values) < len(names):
        defaults = _parameter_defaults(fn)
        values += [kwargs[n] if n in kwargs else defaults[n] for n in names[len(values) :]]
    grid = (*grid, 1, 1)
    kernel.run(grid[0], grid[1], grid[2], driver.get_current_stream(device), kernel.function,
               kernel.packed_metadata, None, None, None, *values)  # fmt: skip


def rebased(template: Any, tensor: Any) -> Any:
    """A copy of descriptor ``template`` over ``tensor``, which has the template's shape, strides and
    dtype and a 16-byte aligned base (the caller checked): the dataclass's checks are not run again."""
    desc = object.__new__(type(template))
    desc.__dict__.update(template.__dict__)
    desc.base = tensor
    return desc


def clear() -> None:
    """Forget the compiled kernels kept (tests; a changed Triton cache)."""
    _kernels.clear()
