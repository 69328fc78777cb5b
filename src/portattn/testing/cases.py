"""The case battery every backend is judged on: shapes, masks and layouts that break kernels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from portattn import sparse

LAYOUTS = ("contiguous", "bhsd", "padded", "strided_last")


@dataclass(frozen=True)
class Case:
    """One call shape and its options.

    ``layout`` picks the memory layout of q/k/v: ``contiguous`` ``(batch, seqlen, heads, dim)``;
    ``bhsd`` stored as ``(batch, heads, seqlen, dim)`` and transposed; ``padded`` a slice of a wider
    last dim; ``strided_last`` a last-dim stride of 2. ``mask`` adds a dense boolean pattern:
    ``random`` (some allowed) or ``empty_rows`` (some query rows see nothing).
    """

    batch: int = 2
    seqlen_q: int = 33
    seqlen_k: int = 33
    heads_q: int = 4
    heads_kv: int = 4
    head_dim: int = 32
    head_dim_v: int | None = None
    causal: bool = False
    window: tuple[int, int] | None = None
    softcap: float | None = None
    scale: float | None = None
    mask: str | None = None
    layout: str = "contiguous"
    tags: tuple[str, ...] = field(default=())

    @property
    def dim_v(self) -> int:
        return self.head_dim if self.head_dim_v is None else self.head_dim_v

    @property
    def name(self) -> str:
        parts = [
            f"B{self.batch}",
            f"Sq{self.seqlen_q}",
            f"Sk{self.seqlen_k}",
            f"H{self.heads_q}" + (f"-{self.heads_kv}" if self.heads_kv != self.heads_q else ""),
            f"D{self.head_dim}" + (f"-{self.dim_v}" if self.dim_v != self.head_dim else ""),
        ]
        if self.causal:
            parts.append("causal")
        if self.window is not None:
            parts.append(f"win{self.window[0]}_{self.window[1]}")
        if self.softcap is not None:
            parts.append(f"cap{self.softcap:g}")
        if self.mask is not None:
            parts.append(f"mask_{self.mask}")
        if self.layout != "contiguous":
            parts.append(self.layout)
        return "-".join(parts)

    def kwargs(self, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
        """Keyword arguments for ``portattn.attention`` (the mask is drawn from ``seed``)."""
        kw: dict[str, Any] = {"causal": self.causal, "window": self.window, "softcap": self.softcap}
        if self.scale is not None:
            kw["scale"] = self.scale
        if self.mask is not None:
            gen = torch.Generator().manual_seed(seed + 7)
            allowed = torch.rand(self.batch, self.heads_q, self.seqlen_q, self.seqlen_k, generator=gen) < 0.6
            if self.mask == "empty_rows":
                allowed[:, :, ::3] = False
            kw["sparsity"] = sparse.dense_mask(allowed.to(device))
        return kw


def _layout(shape: tuple[int, int, int, int], layout: str, dtype: torch.dtype, device: Any, gen: torch.Generator):
    b, s, h, d = shape

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return randn(b, s, h, d)
    if layout == "bhsd":
        return randn(b, h, s, d).transpose(1, 2)
    if layout == "padded":
        return randn(b, s, h, d + 8)[..., :d]
    if layout == "strided_last":
        return randn(b, s, h, d, 2)[..., 0]
    raise ValueError(f"unknown layout {layout!r}; known: {LAYOUTS}")


def make_inputs(
    case: Case,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    requires_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh standard-normal ``q, k, v`` for ``case`` (never zeros), in the case's layout."""
    gen = torch.Generator().manual_seed(seed)
    q = _layout((case.batch, case.seqlen_q, case.heads_q, case.head_dim), case.layout, dtype, device, gen)
    k = _layout((case.batch, case.seqlen_k, case.heads_kv, case.head_dim), case.layout, dtype, device, gen)
    v = _layout((case.batch, case.seqlen_k, case.heads_kv, case.dim_v), case.layout, dtype, device, gen)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def default_cases(level: str = "quick") -> list[Case]:
    """The battery: odd lengths, ``seqlen_q != seqlen_k`` both ways, GQA/MQA, windows incl. -1,
    softcap, fully masked rows, non-contiguous layouts. ``level="full"`` adds larger shapes."""
    base = Case()
    cases = [
        base,
        replace(base, batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1),
        replace(base, seqlen_q=37, seqlen_k=53),
        replace(base, seqlen_q=53, seqlen_k=37),
        replace(base, causal=True),
        replace(base, seqlen_q=19, seqlen_k=70, causal=True),  # bottom-right: last query sees all keys
        replace(base, seqlen_q=70, seqlen_k=19, causal=True),  # the first 51 query rows see nothing
        replace(base, heads_q=6, heads_kv=2, causal=True),  # GQA
        replace(base, heads_q=4, heads_kv=1, seqlen_q=29, seqlen_k=47),  # MQA
        replace(base, window=(8, 0)),
        replace(base, seqlen_q=45, seqlen_k=31, window=(5, 3)),
        replace(base, window=(-1, 4)),
        replace(base, window=(6, -1), causal=True),
        replace(base, seqlen_q=40, seqlen_k=20, window=(0, 0)),  # a diagonal; many empty rows
        replace(base, softcap=2.5),
        replace(base, softcap=10.0, causal=True, heads_q=4, heads_kv=2),
        replace(base, head_dim=40, head_dim_v=24),
        replace(base, scale=0.3, seqlen_k=60),
        replace(base, layout="bhsd", seqlen_q=41, seqlen_k=29, causal=True),
        replace(base, layout="padded", heads_q=4, heads_kv=2),
        replace(base, layout="strided_last", window=(7, 7)),
        replace(base, mask="random", seqlen_q=30, seqlen_k=45, tags=("sparsity",)),
        replace(base, mask="empty_rows", causal=True, tags=("sparsity",)),
    ]
    if level == "full":
        big = replace(base, batch=2, heads_q=8, heads_kv=8, head_dim=64)
        cases += [
            replace(big, seqlen_q=257, seqlen_k=257),
            replace(big, seqlen_q=257, seqlen_k=1025, causal=True),
            replace(big, seqlen_q=1000, seqlen_k=300, causal=True, heads_kv=2),
            replace(big, seqlen_q=513, seqlen_k=513, window=(128, 0), head_dim=128),
            replace(big, seqlen_q=300, seqlen_k=700, softcap=30.0, layout="bhsd"),
        ]
    return cases
