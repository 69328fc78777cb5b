"""Run a backend on a case through portattn's own call path and judge it against the float64 reference."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from portattn import _alloc, _call, _registry
from portattn._api import _AttentionFunction
from portattn.backends.reference.naive import attention_reference
from portattn.testing import tolerances
from portattn.testing.assertions import assert_close, max_error
from portattn.testing.cases import Case, make_inputs

if TYPE_CHECKING:
    from collections.abc import Iterator

    from portattn._backend import Backend


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Within the block, outputs that backends allocate through ``portattn._alloc`` start as NaN."""
    before, _alloc.poison = _alloc.poison, True
    try:
        yield
    finally:
        _alloc.poison = before


@dataclass
class CaseResult:
    """Outcome of one (backend, case, dtype, device): ``pass``, ``fail`` or ``unsupported``."""

    backend: str
    case: Case
    dtype: torch.dtype
    device: str
    status: str
    errors: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def id(self) -> str:
        return f"{self.backend}-{str(self.dtype).replace('torch.', '')}-{self.case.name}"

    def raise_for_failure(self) -> None:
        if self.status == "fail":
            raise AssertionError(f"{self.id}: {self.message}")


def resolve(backend: Backend | str) -> Backend:
    """A backend object from itself or a registered name."""
    if isinstance(backend, str):
        entry = _registry.get().entries.get(backend)
        if entry is None:
            raise KeyError(f"backend {backend!r} is not registered")
        return entry.backend
    return backend


def run_case(
    backend: Backend | str,
    case: Case,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    grad: bool = True,
    seed: int = 0,
) -> CaseResult:
    """Forward (and gradients, where the backend declares ``backward``) vs the float64 reference.

    Inputs are fresh standard-normal tensors; outputs are poisoned before the backend writes them;
    the backend runs through the same autograd wiring as ``portattn.attention``.
    """
    b = resolve(backend)
    device = str(device)
    result = CaseResult(b.name, case, dtype, device, "pass")
    unavailable = b.available()
    if unavailable is not None:
        result.status, result.message = "unsupported", f"unavailable: {unavailable}"
        return result
    features = b.capabilities.features
    grad = grad and _call.BACKWARD in features
    with_lse = _call.LSE in features
    q, k, v = make_inputs(case, device, dtype, seed, requires_grad=grad)
    kwargs = case.kwargs(device, seed)
    options = {"scale": None, "sparsity": None, **kwargs}
    call = _call.normalize(q, k, v, bias=None, precision=None, return_lse=with_lse, top_left=False, **options)
    reasons = b.reasons(call)
    if reasons:
        result.status, result.message = "unsupported", "; ".join(reasons)
        return result

    leaves = [t.detach().to(torch.float64).requires_grad_(grad) for t in (q, k, v)]
    with torch.enable_grad():
        ref_out, ref_lse = attention_reference(call, *leaves)
    try:
        with poisoned_outputs():
            if grad:
                out, lse = _AttentionFunction.apply(q, k, v, b, call)
            else:
                with torch.no_grad():
                    out, lse = b.forward(call, q, k, v)
        checks = [("out", out, ref_out, tolerances.forward(dtype, b))]
        if with_lse:
            checks.append(("lse", lse, ref_lse, tolerances.LSE[dtype]))
        if grad:
            gen = torch.Generator().manual_seed(seed + 1)
            dout = torch.randn(ref_out.shape, generator=gen, dtype=torch.float32)
            outputs, ref_outputs, grads = [out], [ref_out], [dout.to(device=device, dtype=out.dtype)]
            lse_grad = with_lse and _call.LSE_BACKWARD in features
            if lse_grad:
                dlse = torch.randn(ref_lse.shape, generator=gen, dtype=torch.float32).to(device)
                outputs.append(lse)
                ref_outputs.append(ref_lse)
                grads.append(dlse)
            with poisoned_outputs():
                got = torch.autograd.grad(outputs, (q, k, v), grads)
            want = torch.autograd.grad(ref_outputs, leaves, [g.to(torch.float64) for g in grads])
            atol, rtol = tolerances.backward(dtype, b)
            for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
                scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
                checks.append((name, g, w, (atol * scale, rtol)))
        for name, actual, expected, (atol, rtol) in checks:
            if actual is None:
                raise AssertionError(f"{name}: backend returned None")
            result.errors[name] = max_error(actual.cpu(), expected.cpu())
            assert_close(actual, expected, atol, rtol, name)
    except AssertionError as exc:
        result.status, result.message = "fail", str(exc)
    except Exception as exc:  # a crash is a failure of the backend, reported like one
        result.status, result.message = "fail", f"raised {type(exc).__name__}: {exc}"
    return result


def check_backend(
    backend: Backend | str,
    cases: list[Case],
    *,
    device: torch.device | str = "cpu",
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
    grad: bool = True,
) -> list[CaseResult]:
    """``run_case`` over cases and dtypes (fresh inputs per case)."""
    return [
        run_case(backend, case, device=device, dtype=dtype, grad=grad, seed=i)
        for dtype in dtypes
        for i, case in enumerate(cases)
    ]
