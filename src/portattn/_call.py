"""The normalized description of one attention call, and the validation that builds it.

Everything a backend needs to decide whether it can serve a call, without touching tensor data.
Validation raises before any kernel runs: ``TypeError`` for wrong types and mixed dtypes,
``ValueError`` for inconsistent shapes, heads, windows, patterns and devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from portattn.sparse import SparsityPattern

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPE = torch.float8_e4m3fn  # pre-quantized inputs (precision="fp8" with descale tensors)
PRECISIONS = (None, "fp8")

# Feature names used in capabilities and reasons.
CAUSAL = "causal"
WINDOW = "window"
SOFTCAP = "softcap"
GQA = "gqa"
LSE = "lse"
BACKWARD = "backward"
LSE_BACKWARD = "lse_backward"  # gradient flowing into the returned lse
FP8 = "fp8"
KV_OFFLOAD = "kv_offload"
BIAS = "bias"  # additive score bias (SDPA's float attn_mask)
HEAD_DIM_V = "head_dim_v"  # head_dim_v != head_dim
FEATURES = (CAUSAL, WINDOW, SOFTCAP, GQA, LSE, BACKWARD, LSE_BACKWARD, FP8, KV_OFFLOAD, BIAS, HEAD_DIM_V)


@dataclass(frozen=True, slots=True)
class AttentionCall:
    """Read-only description of one call, in the layout of SPEC §1.

    ``band`` is the normalized visibility band from ``causal``/``window`` (and SDPA's top-left
    ``is_causal``): query ``i`` may see key ``j`` iff ``lo <= j - i <= hi``, ``None`` = unbounded; a
    bound is clipped to ``[-seqlen_q, seqlen_k]``.
    Kernels read ``band``; ``causal``/``window`` are kept as the caller gave them for reasons.
    """

    batch: int
    seqlen_q: int
    seqlen_k: int
    heads_q: int
    heads_kv: int
    head_dim: int
    head_dim_v: int
    dtype: torch.dtype
    device: torch.device
    kv_device: torch.device
    causal: bool
    window: tuple[int, int] | None
    band: tuple[int | None, int | None]
    scale: float
    softcap: float | None
    sparsity: SparsityPattern | None
    bias: torch.Tensor | None  # (batch|1, heads_q|1, seqlen_q, seqlen_k), added to the scores
    # float8 inputs: (q_descale, k_descale, v_descale), each float32 (batch, heads_kv): x = x8 * descale
    descale: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    precision: str | None
    return_lse: bool
    requires_grad: bool
    features: frozenset[str]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 unless GQA/MQA)."""
        return self.heads_q // self.heads_kv

    @property
    def needs_lse(self) -> bool:
        """Whether the backend's forward must return ``lse`` (returned, or kept for backward)."""
        return self.return_lse or self.requires_grad

    def describe(self) -> str:
        """One line naming the shapes and flags, for error messages and ``explain``."""
        parts = [
            f"q=({self.batch}, {self.seqlen_q}, {self.heads_q}, {self.head_dim})",
            f"k=({self.batch}, {self.seqlen_k}, {self.heads_kv}, {self.head_dim})",
            f"v=({self.batch}, {self.seqlen_k}, {self.heads_kv}, {self.head_dim_v})",
            str(self.dtype).replace("torch.", ""),
            str(self.device) + ("" if self.kv_device == self.device else f" (k/v on {self.kv_device})"),
        ]
        if self.causal:
            parts.append("causal" if self.band[1] == self.seqlen_k - self.seqlen_q else "causal(top-left)")
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap:g}")
        if self.sparsity is not None:
            density = getattr(self.sparsity, "density", None)  # block patterns: the share of tiles visited
            share = "" if density is None else f" ({density(self.seqlen_q, self.seqlen_k):.1%} of blocks)"
            parts.append(f"sparsity={self.sparsity.kind}{share}")
        if self.bias is not None:
            parts.append("bias")
        if self.precision is not None:
            parts.append(f"precision={self.precision}")
        if self.return_lse:
            parts.append("return_lse")
        if self.requires_grad:
            parts.append("requires_grad")
        return ", ".join(parts)

    def without_fp8(self) -> AttentionCall:
        """The same call in the input dtype: where no backend has an FP8 backward."""
        return replace(self, precision=None, features=self.features - {FP8})

    def with_tensors(
        self,
        sparsity: SparsityPattern | None,
        bias: torch.Tensor | None,
        descale: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> AttentionCall:
        """The same call carrying this call's own mask/bias/descale tensors (the cache keys on shapes)."""
        return replace(self, sparsity=sparsity, bias=bias, descale=descale)


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_number(name: str, value: Any, *, positive: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return value


def _check_window(window: Any) -> tuple[int, int] | None:
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (left, right) or None, got {window!r}")
    for side, value in zip(("left", "right"), window, strict=True):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"window {side} must be an int (-1 = unbounded), got {type(value).__name__} {value!r}")
        if value < -1:
            raise ValueError(f"window {side} must be >= -1 (-1 = unbounded), got {value}")
    return (int(window[0]), int(window[1]))


def band_of(
    seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int] | None, top_left: bool
) -> tuple[int | None, int | None]:
    """Visible ``j - i`` range for bottom-right ``causal``/``window`` (or top-left causal)."""
    offset = 0 if top_left else seqlen_k - seqlen_q
    lo: int | None = None
    hi: int | None = offset if causal else None
    if window is not None:
        left, right = window
        if left != -1:
            lo = offset - left
        if right != -1:
            hi = offset + right if hi is None else min(hi, offset + right)
    return (lo, hi)


def _clamp_band(band: tuple[int | None, int | None], seqlen_q: int, seqlen_k: int) -> tuple[int | None, int | None]:
    """``band`` with its bounds clipped to ``[-seqlen_q, seqlen_k]``, which ``key - query`` never leaves:
    the same visibility, and kernels may add a bound to a position in 32 bits (a window of 2**31 - 8
    would wrap)."""
    lo, hi = band
    return (None if lo is None else max(lo, -seqlen_q), None if hi is None else min(hi, seqlen_k))


def _intersect(a: tuple[int | None, int | None], b: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    """The band both ``a`` and ``b`` allow."""
    lo = [x for x in (a[0], b[0]) if x is not None]
    hi = [x for x in (a[1], b[1]) if x is not None]
    return (max(lo) if lo else None, min(hi) if hi else None)


def _check_offload(requires_grad: bool, sparsity: Any, bias: Any, precision: Any) -> None:
    """KV offload (``k``, ``v`` in host memory, ``q`` on CUDA) streams the keys through a forward."""
    what = "k, v on the CPU with q on CUDA (KV offload)"
    if requires_grad:
        raise ValueError(f"{what} serves the forward only: run under torch.no_grad() or detach q, k, v")
    for name, value in (("sparsity", sparsity), ("attn_mask (bias)", bias), ("precision", precision)):
        if value is not None:
            raise ValueError(f"{what} does not take {name}; got {name} {value!r:.60}")


def normalize(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: Any,
    window: Any,
    scale: Any,
    softcap: Any,
    sparsity: Any,
    bias: Any,
    precision: Any,
    return_lse: Any,
    top_left: bool,
    requires_grad: bool | None = None,
    band: tuple[int | None, int | None] | None = None,
    descale: tuple[Any, Any, Any] | None = None,
) -> AttentionCall:
    """Validate one call's arguments and describe it. Raises before any kernel runs. ``descale``:
    ``(q_descale, k_descale, v_descale)`` as the caller gave them, or None when none was given."""
    from portattn.sparse import SparsityPattern

    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    layouts = {
        "q": "(batch, seqlen_q, heads_q, head_dim)",
        "k": "(batch, seqlen_k, heads_kv, head_dim)",
        "v": "(batch, seqlen_k, heads_kv, head_dim_v)",
    }
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {layouts[name]}, got shape {_shape(t)}")
        if t.dtype not in DTYPES and t.dtype != FP8_DTYPE:
            raise TypeError(f"{name} dtype must be float16, bfloat16, float32 or float8_e4m3fn, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    batch, seqlen_q, heads_q, head_dim = q.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(
            f"batch must match: q has {batch}, k has {k.shape[0]}, v has {v.shape[0]} "
            f"(shapes q {_shape(q)}, k {_shape(k)}, v {_shape(v)})"
        )
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same seqlen_k, got k {_shape(k)} and v {_shape(v)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same heads_kv, got k {_shape(k)} and v {_shape(v)}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k head_dim must equal q head_dim {head_dim}, got k {_shape(k)}")
    seqlen_k, heads_kv, head_dim_v = k.shape[1], k.shape[2], v.shape[3]
    if heads_kv == 0 or heads_q % heads_kv != 0:
        raise ValueError(f"heads_q ({heads_q}) must be a multiple of heads_kv ({heads_kv}) (GQA/MQA)")
    if head_dim == 0 or head_dim_v == 0:
        raise ValueError(f"head_dim must be >= 1, got q {_shape(q)}, v {_shape(v)}")

    if k.device != v.device:
        raise ValueError(f"k and v must be on one device, got k on {k.device}, v on {v.device}")
    if q.device != k.device and not (q.device.type == "cuda" and k.device.type == "cpu"):
        raise ValueError(
            f"q, k, v must be on one device (or q on CUDA with k/v on the CPU for KV offload), "
            f"got q on {q.device}, k/v on {k.device}"
        )

    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__} {causal!r}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__} {return_lse!r}")
    window = _check_window(window)
    scale = _check_number("scale", scale, positive=False)
    softcap = _check_number("softcap", softcap, positive=True)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be None or 'fp8', got {precision!r}")
    if precision == "fp8" and q.dtype not in (torch.float16, torch.bfloat16, FP8_DTYPE):
        raise TypeError(f"precision='fp8' takes float16, bfloat16 or float8_e4m3fn inputs, got {q.dtype}")
    descale = _check_descale(descale, q, batch, heads_kv, precision)
    if sparsity is not None:
        if not isinstance(sparsity, SparsityPattern):
            raise TypeError(f"sparsity must be a pattern from portattn.sparse or None, got {type(sparsity).__name__}")
        sparsity.validate(batch, heads_q, seqlen_q, seqlen_k)
    if bias is not None:
        _check_bias(bias, batch, heads_q, seqlen_q, seqlen_k, q.device)

    if requires_grad is None:
        requires_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if sparsity is not None and sparsity.kind == "sliding_window":
        # a window pattern alone is a band: every backend's band path serves it, with no tile masks
        own = band if band is not None else band_of(seqlen_q, seqlen_k, causal, window, top_left)
        band = _intersect(own, band_of(seqlen_q, seqlen_k, False, (sparsity.left, sparsity.right), False))
        sparsity = None
    features = set()
    if causal or (band is not None and band[1] is not None):
        features.add(CAUSAL)
    if window is not None or (band is not None and band[0] is not None):
        features.add(WINDOW)
    if softcap is not None:
        features.add(SOFTCAP)
    if heads_q != heads_kv:
        features.add(GQA)
    if return_lse:
        features.add(LSE)
    if requires_grad:
        features.add(BACKWARD)
    if precision == "fp8":
        features.add(FP8)
    if k.device != q.device:
        _check_offload(requires_grad, sparsity, bias, precision)
        features.add(KV_OFFLOAD)
    if bias is not None:
        features.add(BIAS)
    if head_dim_v != head_dim:
        features.add(HEAD_DIM_V)

    return AttentionCall(
        batch=batch,
        seqlen_q=seqlen_q,
        seqlen_k=seqlen_k,
        heads_q=heads_q,
        heads_kv=heads_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        dtype=q.dtype,
        device=q.device,
        kv_device=k.device,
        causal=causal,
        window=window,
        band=_clamp_band(
            band if band is not None else band_of(seqlen_q, seqlen_k, causal, window, top_left), seqlen_q, seqlen_k
        ),
        scale=head_dim**-0.5 if scale is None else scale,
        softcap=softcap,
        sparsity=sparsity,
        bias=bias,
        descale=descale,
        precision=precision,
        return_lse=return_lse,
        requires_grad=requires_grad,
        features=frozenset(features),
    )


def _check_descale(
    descale: tuple[Any, Any, Any] | None, q: torch.Tensor, batch: int, heads_kv: int, precision: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """float8 inputs come with FA3's descale tensors, float32 ``(batch, heads_kv)`` each; others with none."""
    names = ("q_descale", "k_descale", "v_descale")
    given = descale is not None and any(d is not None for d in descale)
    if q.dtype != FP8_DTYPE:
        if given:
            raise ValueError("q_descale, k_descale and v_descale apply to float8_e4m3fn inputs only")
        return None
    if precision != "fp8":
        raise TypeError("float8_e4m3fn inputs need precision='fp8' (and q_descale, k_descale, v_descale)")
    if descale is None:
        descale = (None, None, None)
    for name, d in zip(names, descale, strict=True):
        if not isinstance(d, torch.Tensor):
            raise TypeError(
                f"{name} must be a float32 tensor (batch, heads_kv) for float8 inputs, got {type(d).__name__}"
            )
        if d.dtype != torch.float32 or tuple(d.shape) != (batch, heads_kv):
            raise ValueError(
                f"{name} must be float32 ({batch}, {heads_kv}) (batch, heads_kv), got {d.dtype} {_shape(d)}"
            )
        if d.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {d.device}")
    return tuple(descale)


def _check_bias(bias: Any, batch: int, heads: int, seqlen_q: int, seqlen_k: int, device: torch.device) -> None:
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        raise TypeError(f"attn_mask bias must be a floating-point tensor, got {type(bias).__name__}")
    if bias.dim() != 4:
        raise ValueError(f"attn_mask bias must be 4-D (batch, heads, seqlen_q, seqlen_k), got {_shape(bias)}")
    if bias.requires_grad:
        raise ValueError("attn_mask requiring grad is not supported (no gradient flows into the bias)")
    if bias.device != device:
        raise ValueError(f"attn_mask must be on the device of q ({device}), got {bias.device}")
    check_mask_shape("attn_mask", bias, batch, heads, seqlen_q, seqlen_k)


def check_mask_shape(name: str, mask: torch.Tensor, batch: int, heads: int, seqlen_q: int, seqlen_k: int) -> None:
    """A 4-D mask or bias: batch and heads may be 1 (broadcast), seqlen_q and seqlen_k must be exact."""
    expected = (batch, heads, seqlen_q, seqlen_k)
    ok = mask.dim() == 4 and mask.shape[0] in (1, batch) and mask.shape[1] in (1, heads)
    if not ok or tuple(mask.shape[2:]) != (seqlen_q, seqlen_k):
        raise ValueError(
            f"{name} of shape {_shape(mask)} does not fit (batch|1, heads_q|1, seqlen_q, seqlen_k) = {expected}"
        )
