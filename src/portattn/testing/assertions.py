"""Assertions that diagnose: worst element, its index, the fraction failing; NaN never passes."""

from __future__ import annotations

import torch


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, treating matching infinities as equal and any NaN as infinite."""
    a, e = actual.detach().to(torch.float64), expected.detach().to(torch.float64).to(actual.device)
    same_inf = torch.isinf(a) & torch.isinf(e) & (torch.sign(a) == torch.sign(e))
    diff = torch.where(same_inf, torch.zeros_like(a), (a - e).abs())
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    return float(diff.max()) if diff.numel() else 0.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str = "output") -> None:
    """Fail unless ``|actual - expected| <= atol + rtol*|expected|`` everywhere (and shapes match).

    NaN in ``actual`` always fails; infinities must match in sign and position (``lse = -inf``).
    """
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    nan = torch.isnan(a)
    if bool(nan.any()):
        idx = tuple(int(i) for i in nan.nonzero()[0])
        raise AssertionError(f"{what}: {int(nan.sum())} NaN of {a.numel()} (first at {idx}); NaN never passes")
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    bad_inf = (inf_a | inf_e) & ~((a == e) & inf_a)
    if bool(bad_inf.any()):
        idx = tuple(int(i) for i in bad_inf.nonzero()[0])
        raise AssertionError(f"{what}: infinity mismatch at {idx}: got {a[idx].item()}, expected {e[idx].item()}")
    finite = ~inf_e
    diff = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    allowed = atol + rtol * e.abs().masked_fill(~finite, 0)
    failing = diff > allowed
    if bool(failing.any()):
        worst = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(
            f"{what}: {int(failing.sum())} of {a.numel()} elements ({float(failing.float().mean()):.2%}) "
            f"outside atol={atol:g} rtol={rtol:g}; worst at {worst}: got {a[worst].item():.6g}, "
            f"expected {e[worst].item():.6g} (|diff| {diff[worst].item():.3g})"
        )
