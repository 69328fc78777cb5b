"""The backend protocol: capabilities declared as data, reasons as strings.

A backend subclasses :class:`Backend`, fills in ``name``, ``priority`` and ``capabilities``, and
implements ``forward`` (and ``backward`` if it declares the ``backward`` feature). The default
``reasons()`` compares the capabilities with the call; ``extra_reasons()`` adds fine checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from portattn import _call
from portattn._device import cuda_capability

if TYPE_CHECKING:
    from portattn._call import AttentionCall

ALL_DTYPES = frozenset(_call.DTYPES)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can serve, as data. ``None`` means no restriction.

    Attributes:
        devices: device types (``"cpu"``, ``"cuda"``, ``"npu"``, ...), None = any torch device.
        compute_capability: inclusive ``((major, minor), (major, minor) | None)`` range on CUDA.
        dtypes: input dtypes served.
        head_dims: exact head dims served (None = any), checked for q/k and for v.
        max_head_dim: largest head dim served (None = no limit).
        features: optional features served, names from ``portattn._call.FEATURES``.
        sparsity: sparsity pattern kinds served (``SparsityPattern.kind``), None = every kind.
    """

    devices: frozenset[str] | None = None
    compute_capability: tuple[tuple[int, int], tuple[int, int] | None] | None = None
    dtypes: frozenset[torch.dtype] = ALL_DTYPES
    head_dims: frozenset[int] | None = None
    max_head_dim: int | None = None
    features: frozenset[str] = frozenset()
    sparsity: frozenset[str] | None = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(_call.FEATURES)
        if unknown:
            raise ValueError(f"unknown capability features {sorted(unknown)}; known: {list(_call.FEATURES)}")

    def summary(self) -> dict[str, object]:
        """JSON-friendly view (for ``portattn info --json``)."""
        cc = self.compute_capability
        if self.head_dims is not None:
            head_dims: object = sorted(self.head_dims)
        else:
            head_dims = f"<= {self.max_head_dim}" if self.max_head_dim else "any"
        return {
            "devices": sorted(self.devices) if self.devices is not None else "any",
            "compute_capability": None if cc is None else [list(cc[0]), list(cc[1]) if cc[1] else None],
            "dtypes": sorted(_dtype_name(d) for d in self.dtypes),
            "head_dims": head_dims,
            "features": sorted(self.features),
            "sparsity": sorted(self.sparsity) if self.sparsity is not None else "any",
        }


def capability_reasons(caps: Capabilities, call: AttentionCall) -> list[str]:
    """Each way the call falls outside ``caps``, as a sentence with expected and actual values."""
    reasons: list[str] = []
    dev = call.device.type
    if caps.devices is not None and dev not in caps.devices:
        reasons.append(f"device type '{dev}' not supported (supported: {', '.join(sorted(caps.devices))})")
    if caps.compute_capability is not None:
        if dev != "cuda":
            reasons.append(f"needs a CUDA device, got '{dev}'")
        else:
            lo, hi = caps.compute_capability
            cc = cuda_capability(call.device)
            if cc < lo or (hi is not None and cc > hi):
                want = f"sm{lo[0]}{lo[1]}+" if hi is None else f"sm{lo[0]}{lo[1]}..sm{hi[0]}{hi[1]}"
                reasons.append(f"compute capability sm{cc[0]}{cc[1]} outside supported range {want}")
    if call.dtype not in caps.dtypes:
        names = ", ".join(sorted(_dtype_name(d) for d in caps.dtypes))
        reasons.append(f"dtype {_dtype_name(call.dtype)} not supported (supported: {names})")
    for label, dim in (("head_dim", call.head_dim), ("head_dim_v", call.head_dim_v)):
        if caps.head_dims is not None and dim not in caps.head_dims:
            reasons.append(f"{label} {dim} not supported (supported: {', '.join(map(str, sorted(caps.head_dims)))})")
        elif caps.max_head_dim is not None and dim > caps.max_head_dim:
            reasons.append(f"{label} {dim} larger than the supported maximum {caps.max_head_dim}")
    missing = sorted(call.features - caps.features)
    for feature in missing:
        reasons.append(f"feature '{feature}' not supported")
    if call.sparsity is not None and caps.sparsity is not None and call.sparsity.kind not in caps.sparsity:
        have = ", ".join(sorted(caps.sparsity)) or "none"
        reasons.append(f"sparsity '{call.sparsity.kind}' not supported (supported: {have})")
    return reasons


class Backend:
    """Base class of every backend, built-in or third-party (SPEC §5).

    Subclasses set the class attributes and implement ``forward`` (and ``backward``).
    Tensors are in the layout of SPEC §1: ``q (batch, seqlen_q, heads_q, head_dim)``,
    ``k (batch, seqlen_k, heads_kv, head_dim)``, ``v (batch, seqlen_k, heads_kv, head_dim_v)``,
    ``out (batch, seqlen_q, heads_q, head_dim_v)``, ``lse`` float32 ``(batch, heads_q, seqlen_q)``.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    capabilities: ClassVar[Capabilities] = Capabilities()
    description: ClassVar[str] = ""
    # Tolerance overrides for the conformance kit: {dtype: (atol, rtol)} for forward / backward.
    tolerances: ClassVar[dict[torch.dtype, tuple[float, float]]] = {}
    grad_tolerances: ClassVar[dict[torch.dtype, tuple[float, float]]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} priority={self.priority}>"

    def available(self) -> str | None:
        """None when this backend can run on this machine, else the reason it cannot."""
        return None

    def priority_for(self, call: AttentionCall) -> int:
        """The priority this backend ranks by for ``call`` (``priority`` unless a backend ranks itself
        differently on some devices: a fallback path on GPUs that another backend is made for)."""
        return self.priority

    def active_capabilities(self) -> Capabilities:
        """The capabilities that apply now (a backend may widen them in a test mode)."""
        return self.capabilities

    def reasons(self, call: AttentionCall) -> list[str]:
        """Why this backend cannot serve ``call`` (empty when it can)."""
        reasons = capability_reasons(self.active_capabilities(), call)
        if not reasons:
            reasons.extend(self.extra_reasons(call))
        return reasons

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        """Fine checks beyond the declared capabilities; override to add some."""
        return []

    def forward(
        self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(out, lse)``; ``lse`` may be None unless ``call.needs_lse``."""
        raise NotImplementedError(f"backend {self.name!r} does not implement forward")

    def backward(
        self,
        call: AttentionCall,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        dout: torch.Tensor,
        dlse: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(dq, dk, dv)`` shaped like ``q, k, v``. ``dlse`` only if ``lse_backward`` is declared."""
        raise NotImplementedError(f"backend {self.name!r} does not implement backward")
