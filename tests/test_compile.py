"""``torch.compile`` traces through ``portattn.attention`` without graph breaks (``fullgraph=True``),
with the same values and gradients as eager mode."""

from __future__ import annotations

import pytest
import torch

import portattn


def qkv(requires_grad=True, heads_kv=4):
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 37, 4, 16), (2, 45, heads_kv, 16), (2, 45, heads_kv, 16)]
    return [torch.randn(*s, generator=gen).requires_grad_(requires_grad) for s in shapes]


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_fullgraph_forward_and_backward(compiler):
    def block(q, k, v):
        return (portattn.attention(q, k, v, causal=True, window=(8, -1), softcap=5.0) * 2).sum(-1)

    q, k, v = qkv(heads_kv=2)
    compiled = torch.compile(block, backend=compiler, fullgraph=True)
    out, expected = compiled(q, k, v), block(q, k, v)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_fullgraph_lse_and_its_gradient():
    def block(q, k, v):
        out, lse = portattn.attention(q, k, v, return_lse=True)
        return out.sum() + lse.sum()

    q, k, v = qkv()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    want = torch.autograd.grad(block(q, k, v), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_compiled_call_still_dispatches_and_validates(fresh_registry):
    compiled = torch.compile(lambda q, k, v: portattn.attention(q, k, v, backend="reference"), fullgraph=True)
    q, k, v = qkv(requires_grad=False)
    torch.testing.assert_close(compiled(q, k, v), portattn.attention(q, k, v, backend="portable"))
    with pytest.raises(Exception, match="heads_q"):
        torch.compile(lambda q, k, v: portattn.attention(q, k, v), backend="aot_eager")(q, k[:, :, :3], v[:, :, :3])
