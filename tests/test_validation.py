"""Every bad input of SPEC §1 raises the right exception, naming the argument, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import portattn
from portattn._backend import Backend, Capabilities


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


Q, K, V = t(2, 5, 4, 8), t(2, 7, 2, 8), t(2, 7, 2, 8)

BAD = [
    # (description, args, kwargs, exception type, words the message must contain)
    ("q not a tensor", ([[1.0]], K, V), {}, TypeError, ["q", "torch.Tensor"]),
    ("v not a tensor", (Q, K, None), {}, TypeError, ["v", "torch.Tensor"]),
    ("q 3-D", (t(5, 4, 8), K, V), {}, ValueError, ["q", "4-D", "(5, 4, 8)"]),
    ("k 5-D", (Q, t(2, 7, 2, 8, 1), V), {}, ValueError, ["k", "4-D"]),
    ("int dtype", (Q.long(), K.long(), V.long()), {}, TypeError, ["q", "dtype", "int64"]),
    ("float64", (Q.double(), K.double(), V.double()), {}, TypeError, ["q", "dtype", "float64"]),
    ("mixed dtypes", (Q, K.half(), V), {}, TypeError, ["one dtype", "float16"]),
    ("batch mismatch", (Q, t(3, 7, 2, 8), t(3, 7, 2, 8)), {}, ValueError, ["batch", "2", "3"]),
    ("seqlen_k mismatch", (Q, K, t(2, 6, 2, 8)), {}, ValueError, ["seqlen_k", "(2, 7, 2, 8)", "(2, 6, 2, 8)"]),
    ("heads_kv mismatch", (Q, K, t(2, 7, 1, 8)), {}, ValueError, ["heads_kv"]),
    ("head_dim mismatch", (Q, t(2, 7, 2, 16), t(2, 7, 2, 8)), {}, ValueError, ["head_dim", "8"]),
    ("heads not divisible", (t(2, 5, 3, 8), K, V), {}, ValueError, ["heads_q (3)", "heads_kv (2)"]),
    ("zero head dim", (t(2, 5, 4, 0), t(2, 7, 2, 0), t(2, 7, 2, 0)), {}, ValueError, ["head_dim"]),
    ("causal not bool", (Q, K, V), {"causal": 1}, TypeError, ["causal", "bool"]),
    ("window not pair", (Q, K, V), {"window": 3}, ValueError, ["window", "pair"]),
    ("window triple", (Q, K, V), {"window": (1, 2, 3)}, ValueError, ["window"]),
    ("window < -1", (Q, K, V), {"window": (-2, 0)}, ValueError, ["window left", ">= -1", "-2"]),
    ("window float", (Q, K, V), {"window": (1.5, 0)}, TypeError, ["window left", "int"]),
    ("scale str", (Q, K, V), {"scale": "0.1"}, TypeError, ["scale"]),
    ("scale nan", (Q, K, V), {"scale": float("nan")}, ValueError, ["scale", "finite"]),
    ("softcap negative", (Q, K, V), {"softcap": -1.0}, ValueError, ["softcap", "positive"]),
    ("softcap zero", (Q, K, V), {"softcap": 0}, ValueError, ["softcap"]),
    ("precision unknown", (Q, K, V), {"precision": "int4"}, ValueError, ["precision", "int4"]),
    ("fp8 from float32", (Q, K, V), {"precision": "fp8"}, TypeError, ["fp8", "float32"]),
    ("return_lse not bool", (Q, K, V), {"return_lse": "yes"}, TypeError, ["return_lse"]),
    ("sparsity not a pattern", (Q, K, V), {"sparsity": torch.ones(5, 7, dtype=torch.bool)}, TypeError, ["sparsity"]),
    (
        "pattern of wrong shape",
        (Q, K, V),
        {"sparsity": portattn.sparse.dense_mask(torch.ones(5, 6, dtype=torch.bool))},
        ValueError,
        ["dense_mask", "(1, 1, 5, 6)", "seqlen_k"],
    ),
    ("backend not a string", (Q, K, V), {"backend": 3}, TypeError, ["backend"]),
]


@pytest.mark.parametrize("what,args,kwargs,exc,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(what, args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        portattn.attention(*args, **kwargs)
    for word in words:
        assert word in str(info.value), f"{what}: {word!r} not in {info.value}"


def test_bad_input_raises_before_any_kernel(fresh_registry):
    calls = []

    class Spy(Backend):
        name = "spy"
        priority = 10_000
        capabilities = Capabilities(features=frozenset({"causal", "window", "gqa", "softcap"}))

        def forward(self, call, q, k, v):
            calls.append(call)
            raise AssertionError("a kernel ran on bad input")

    portattn.register_backend(Spy())
    for _, args, kwargs, exc, _ in BAD:
        with pytest.raises(exc):
            portattn.attention(*args, **kwargs)
    assert calls == []


def test_mixed_devices_are_refused():
    meta = torch.empty(2, 7, 2, 8, device="meta")
    with pytest.raises(ValueError, match="one device"):
        portattn.attention(Q, meta, meta)
    with pytest.raises(ValueError, match="k and v must be on one device"):
        portattn.attention(Q, K, meta)


def test_validation_is_not_skipped_by_the_cache():
    portattn.attention(Q, K, V, causal=True)  # cached signature
    with pytest.raises(ValueError):
        portattn.attention(Q, K, t(2, 6, 2, 8), causal=True)
    with pytest.raises(TypeError):
        portattn.attention(Q, K, V, causal="yes")


def test_sdpa_bad_inputs():
    q = t(2, 4, 5, 8)
    with pytest.raises(TypeError, match="query"):
        portattn.sdpa("q", q, q)
    with pytest.raises(ValueError, match="attn_mask"):
        portattn.sdpa(q, q, q, attn_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask"):
        portattn.sdpa(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="dropout_p"):
        portattn.sdpa(q, q, q, dropout_p=0.5)
