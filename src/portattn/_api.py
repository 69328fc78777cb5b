"""The public calls: ``attention``, ``sdpa``, ``explain``; the one autograd wiring for all backends.

Hot path: a tuple of the call's signature is looked up in a dict that holds the validated call
description and the chosen backend, so a repeated call costs a lookup plus the kernel. When nothing
requires grad, no autograd machinery runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from portattn import _call, _dispatch, _registry
from portattn._call import AttentionCall
from portattn.sparse.dynamic import DynamicPattern

if TYPE_CHECKING:
    from portattn._backend import Backend
    from portattn.sparse import SparsityPattern

_CACHE_LIMIT = 4096
_cache: dict[tuple, tuple[AttentionCall, Backend]] = {}


class _AttentionFunction(torch.autograd.Function):
    """Autograd for every backend: saves ``q, k, v, out, lse``; backward recomputes (no S x S tensor)."""

    @staticmethod
    def forward(ctx, q, k, v, backend, call):  # type: ignore[override]
        out, lse = backend.forward(call, q, k, v)  # lse may be None if backward does not need it
        ctx.backend, ctx.call = backend, call
        ctx.save_for_backward(q, k, v, out, lse)
        if lse is not None and not call.return_lse:
            ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        backend, call = ctx.backend, ctx.call
        if dout is None:
            dout = torch.zeros_like(out)
        if dlse is not None and _call.LSE_BACKWARD not in backend.capabilities.features:
            raise RuntimeError(
                f"backend {backend.name!r} has no gradient for the returned lse; "
                "use lse only outside the graph (lse.detach()) or pick a backend with 'lse_backward'"
            )
        kwargs = {"dlse": dlse} if dlse is not None else {}
        dq, dk, dv = backend.backward(call, q, k, v, out, lse, dout, **kwargs)
        return dq, dk, dv, None, None


def run(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: Any = False,
    window: Any = None,
    scale: Any = None,
    softcap: Any = None,
    sparsity: SparsityPattern | None = None,
    bias: torch.Tensor | None = None,
    precision: Any = None,
    return_lse: Any = False,
    backend: str | None = None,
    top_left: bool = False,
    band: tuple[int | None, int | None] | None = None,
    descale: tuple[Any, Any, Any] | None = None,
) -> Any:
    """Validate (or find in the cache), dispatch, and run one call. ``band`` (internal) replaces the
    band derived from ``causal``/``window``: ``lo <= j - i <= hi`` in this call's own indices."""
    if isinstance(sparsity, DynamicPattern):  # qk_drop, hash_buckets: compaction (portattn/_dynamic.py)
        from portattn import _dynamic

        return _dynamic.run(
            q, k, v, pattern=sparsity, causal=causal, window=window, scale=scale, softcap=softcap, bias=bias,
            precision=precision, return_lse=return_lse, backend=backend, top_left=top_left, band=band, descale=descale,
        )  # fmt: skip
    call, chosen = resolve(
        q, k, v, causal=causal, window=window, scale=scale, softcap=softcap, sparsity=sparsity, bias=bias,
        precision=precision, return_lse=return_lse, backend=backend, top_left=top_left, band=band, descale=descale,
    )  # fmt: skip
    if _call.KV_OFFLOAD in call.features:  # k, v in host memory: the core streams them (forward only)
        from portattn import _offload

        out, lse = _offload.forward(call, chosen.name, q, k, v)
    elif call.requires_grad:
        out, lse = _AttentionFunction.apply(q, k, v, chosen, call)
    else:
        out, lse = chosen.forward(call, q, k, v)
    return (out, lse) if return_lse else out


def resolve(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: Any,
    window: Any,
    scale: Any,
    softcap: Any,
    sparsity: SparsityPattern | None,
    bias: torch.Tensor | None,
    precision: Any,
    return_lse: Any,
    backend: str | None,
    top_left: bool,
    grad: bool | None = None,
    band: tuple[int | None, int | None] | None = None,
    descale: tuple[Any, Any, Any] | None = None,
) -> tuple[AttentionCall, Backend]:
    """The validated call and the backend that serves it, from the cache when the signature was seen.

    ``grad`` overrides whether a backward is needed (else: grad mode and ``requires_grad``)."""
    forced = _dispatch.forced_name(backend)
    reg = _registry.get()
    try:
        if grad is None:
            grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        key = (
            q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
            causal, window, scale, softcap, precision, return_lse, grad, top_left, forced, reg.version, band,
            None if sparsity is None else sparsity.cache_key,
            None if bias is None else (bias.shape, bias.dtype, bias.device, bias.requires_grad),
            None if descale is None else tuple(None if d is None else (d.shape, d.dtype, d.device) for d in descale),
        )  # fmt: skip
        hit = _cache.get(key)
    except (AttributeError, TypeError):  # not tensors, or unhashable arguments: validation says what
        key, hit = None, None
    if hit is None:
        call = _call.normalize(
            q, k, v, causal=causal, window=window, scale=scale, softcap=softcap, sparsity=sparsity,
            bias=bias, precision=precision, return_lse=return_lse, top_left=top_left, requires_grad=grad, band=band,
            descale=descale,
        )  # fmt: skip
        call, chosen = _dispatch.select_call(call, forced)
        if key is not None:
            if len(_cache) >= _CACHE_LIMIT:
                _cache.clear()
            _cache[key] = (call, chosen)
    else:
        call, chosen = hit
        if sparsity is not None or bias is not None or descale is not None:
            # this call's own mask tensors; a pattern validation folded into the band stays folded
            pattern = sparsity if call.sparsity is not None else None
            call = call.with_tensors(pattern, bias, None if call.descale is None else tuple(descale))
    return call, chosen


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: tuple[int, int] | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    sparsity: SparsityPattern | None = None,
    precision: str | None = None,
    return_lse: bool = False,
    backend: str | None = None,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention on whatever hardware holds the tensors (SPEC §1).

    Args:
        q: ``(batch, seqlen_q, heads_q, head_dim)``, any strides.
        k: ``(batch, seqlen_k, heads_kv, head_dim)``; ``heads_q % heads_kv == 0`` (GQA/MQA).
        v: ``(batch, seqlen_k, heads_kv, head_dim_v)``.
        causal: bottom-right aligned: query ``i`` sees key ``j`` iff ``j <= i + seqlen_k - seqlen_q``.
        window: ``(left, right)``: query ``i`` sees ``i+off-left <= j <= i+off+right``, ``-1`` unbounded.
        scale: softmax scale, default ``head_dim ** -0.5``.
        softcap: scores become ``softcap * tanh(scores / softcap)`` before masking and softmax.
        sparsity: a pattern from ``portattn.sparse``, ANDed with causal/window.
        precision: None (input dtype, fp32 accumulation) or ``"fp8"``.
        return_lse: also return ``lse`` float32 ``(batch, heads_q, seqlen_q)`` (natural log).
        backend: force a backend by name (``NoBackendError`` with its reasons if it cannot serve).
        q_descale, k_descale, v_descale: for inputs already quantized to ``float8_e4m3fn`` (FA3's API):
            float32 ``(batch, heads_kv)`` each, the real values being ``x * descale``; with
            ``precision="fp8"``. The output is then bfloat16.

    Returns:
        ``out (batch, seqlen_q, heads_q, head_dim_v)`` in q's dtype (bfloat16 for float8 inputs), or
        ``(out, lse)``.
        A query row that sees no key has out 0 and lse ``-inf``.
    """
    if torch.compiler.is_compiling() and sparsity is None and precision is None:
        # one opaque custom op for torch.compile: no graph break; dispatch happens when it runs.
        # Imported here, not at `import portattn`: registering the ops costs ~5 ms few users need.
        from portattn import _compile

        return _compile.attention(q, k, v, causal, window, scale, softcap, return_lse, backend)
    descale = (
        None if q_descale is None and k_descale is None and v_descale is None else (q_descale, k_descale, v_descale)
    )
    return run(
        q, k, v, causal=causal, window=window, scale=scale, softcap=softcap, sparsity=sparsity,
        precision=precision, return_lse=return_lse, backend=backend, descale=descale,
    )  # fmt: skip


def sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``.

    SDPA's layout ``(batch, heads, seqlen, head_dim)`` (or 3-D ``(batch, seqlen, head_dim)``), its
    top-left ``is_causal``, a boolean (True = attend) or additive float ``attn_mask`` broadcastable to
    ``(batch, heads, seqlen_q, seqlen_k)``, and ``enable_gqa``. ``dropout_p > 0`` is refused.
    """
    from portattn.sparse import DenseMask

    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if dropout_p != 0.0:
        raise ValueError(
            f"dropout_p={dropout_p} is not supported: portattn computes exact attention; "
            "pass dropout_p=0.0 (e.g. dropout_p=p if self.training else 0.0, in eval)"
        )
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    tensors = []
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(
                f"{name} must be (batch, heads, seqlen, head_dim) or (batch, seqlen, head_dim), got {tuple(t.shape)}"
            )
        tensors.append(t.unsqueeze(1) if t.dim() == 3 else t)
    if len({t.dim() for t in (query, key, value)}) != 1:
        raise ValueError("query, key and value must have the same number of dims")
    q, k, v = (t.transpose(1, 2) for t in tensors)  # -> (batch, seqlen, heads, head_dim), views
    if q.shape[2] != k.shape[2] and not enable_gqa:
        raise ValueError(
            f"query has {q.shape[2]} heads and key {k.shape[2]}: pass enable_gqa=True for grouped-query attention"
        )
    sparsity, bias = None, None
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        full = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        try:
            mask = attn_mask.expand(full)
        except RuntimeError:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} is not broadcastable to "
                f"(batch, heads, seqlen_q, seqlen_k) = {full}"
            ) from None
        # keep broadcast dims at size 1 so the mask is never copied per batch/head
        mask = mask[:1] if attn_mask.dim() < 4 or attn_mask.shape[0] == 1 else mask
        mask = mask[:, :1] if attn_mask.dim() < 3 or attn_mask.shape[-3] == 1 else mask
        if mask.dtype == torch.bool:
            sparsity = DenseMask(mask)
        elif mask.is_floating_point():
            bias = mask.to(q.dtype) if mask.dtype != q.dtype else mask
        else:
            raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
    out = run(q, k, v, causal=is_causal, scale=scale, sparsity=sparsity, bias=bias, top_left=True)
    out = out.transpose(1, 2)
    return out.squeeze(1) if query.dim() == 3 else out


def explain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, quiet: bool = False, **kwargs: Any):
    """Why each backend can or cannot serve ``attention(q, k, v, **kwargs)``, and which one is chosen.

    Prints the table unless ``quiet``; returns an :class:`Explanation` (``str()`` is the table,
    ``as_dict()`` its data).
    """
    forced = _dispatch.forced_name(kwargs.pop("backend", None))
    options = {"causal": False, "window": None, "scale": None, "softcap": None, "sparsity": None,
               "precision": None, "return_lse": False}  # fmt: skip
    descales = [kwargs.pop(name, None) for name in ("q_descale", "k_descale", "v_descale")]
    unknown = set(kwargs) - set(options)
    if unknown:
        raise TypeError(f"explain() got unexpected keyword arguments {sorted(unknown)}")
    options.update(kwargs)
    descale = None if all(d is None for d in descales) else tuple(descales)
    if isinstance(options["sparsity"], DynamicPattern):  # the call that runs is the compacted one
        from portattn import _dynamic

        pattern = options.pop("sparsity")
        call, plan, q, k, v = _dynamic.compacted_call(q, k, v, pattern=pattern, top_left=False, descale=descale,
                                                      **options)  # fmt: skip
        options.update(causal=False, window=None, scale=call.scale, sparsity=plan.mask, return_lse=True)
    call = _call.normalize(q, k, v, bias=None, top_left=False, descale=descale, **options)
    result = _dispatch.explanation(call, forced)
    if not quiet:
        print(result)
    return result


def list_backends() -> list[_registry.BackendRecord]:
    """One record per backend (name, origin, available, reason, priority, capabilities), failed plugins too."""
    return _registry.get().records()
