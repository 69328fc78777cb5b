"""``portattn bench``: time portattn backends and torch's own kernels on a shape grid, side by side.

FLOPs are counted as the flash-attn benchmarks do: forward ``4 * batch * heads * seqlen_q * seqlen_k *
head_dim``, halved for causal; forward+backward 3.5x the forward. The default grid is the
FlashAttention papers': a fixed number of tokens per batch and a fixed hidden size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch

import portattn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TORCH_SDPA_KERNELS = {
    "torch.sdpa.flash": "FLASH_ATTENTION",
    "torch.sdpa.cudnn": "CUDNN_ATTENTION",
    "torch.sdpa.efficient": "EFFICIENT_ATTENTION",
    "torch.sdpa.math": "MATH",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backends",
        help="comma-separated portattn backends (default: every available one but reference);"
        " NAME:fp8 times NAME with precision='fp8'",
    )
    p.add_argument("--baselines", default="auto",
                   help="comma-separated torch baselines: torch.sdpa (default kernel choice), "
                        f"{', '.join(TORCH_SDPA_KERNELS)}, torch.flex; 'auto' = those that run on the device; "
                        "'none'")  # fmt: skip
    p.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--seqlens", default=None, help="comma-separated (default: 512..16384 on cuda, 256,512,1024 on cpu)")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--tokens", type=int, default=None, help="tokens per batch: batch = tokens // seqlen (16384 cuda)")
    p.add_argument("--hidden", type=int, default=None, help="heads = hidden // head_dim (2048 on cuda)")
    p.add_argument("--heads-kv", type=int, default=None, help="key/value heads (default: = query heads)")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--mode", choices=["fwd", "fwd+bwd", "both"], default="fwd")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per point (median reported)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds per point, median reported (default 3 on cuda, 1 on cpu)",
    )
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a TFLOP/s plot (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true")


@dataclass
class Point:
    """One measurement."""

    impl: str
    mode: str
    batch: int
    seqlen: int
    heads: int
    heads_kv: int
    head_dim: int
    causal: bool
    dtype: str
    ms: float | None
    tflops: float | None
    note: str = ""


def flops(batch: int, heads: int, seqlen: int, head_dim: int, causal: bool, mode: str) -> float:
    f = 4.0 * batch * heads * seqlen * seqlen * head_dim / (2 if causal else 1)
    return f * 3.5 if mode == "fwd+bwd" else f


WARMUP_MS = 100.0  # run at least this long before timing: clocks ramp up after idle (e.g. a compile)


def _timer(device: torch.device, repeats: int) -> Callable[[Callable[[], object]], float]:
    def time_cuda(fn: Callable[[], object], warmup_ms: float = WARMUP_MS) -> float:
        fn()
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        calls = 0
        while calls < 3 or (time.perf_counter() - start) * 1e3 < warmup_ms:
            fn()
            torch.cuda.synchronize(device)  # without it the CPU would queue far more than WARMUP_MS of work
            calls += 1
        per_call_ms = (time.perf_counter() - start) * 1e3 / calls
        # back to back, as in a model: one event pair per call, one synchronize at the end
        n = max(repeats, min(200, int(WARMUP_MS / max(per_call_ms, 1e-3))))  # ~100 ms of samples
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start_event, end_event in events:
            start_event.record()
            fn()
            end_event.record()
        torch.cuda.synchronize(device)
        return statistics.median(s.elapsed_time(e) for s, e in events)

    def time_cpu(fn: Callable[[], object], warmup_ms: float = 0.0) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return time_cuda if device.type == "cuda" else time_cpu


def _torch_impl(name: str, device: torch.device) -> tuple[Callable | None, str]:
    """A callable ``(q, k, v, causal) -> out`` in SDPA layout ``(batch, heads, seqlen, dim)``, or a reason."""
    import torch.nn.functional as F

    if name == "torch.sdpa":
        return (lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)), ""
    if name in TORCH_SDPA_KERNELS:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = getattr(SDPBackend, TORCH_SDPA_KERNELS[name])

        def run_kernel(q, k, v, causal):
            with sdpa_kernel([kernel]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])

        return run_kernel, ""
    if name == "torch.flex":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as exc:
            return None, f"FlexAttention unavailable: {exc}"
        import torch._dynamo

        # one compile per shape, as FlexAttention is meant to be used; past the default limit of 8
        # recompiles dynamo would fall back to eager and time something else
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 256)
        compiled = torch.compile(flex_attention, dynamic=False)
        masks: dict[tuple, object] = {}

        def run_flex(q, k, v, causal):
            block_mask = None
            if causal:
                key = (q.shape[2], k.shape[2])
                if key not in masks:
                    masks[key] = create_block_mask(
                        lambda b, h, i, j: j <= i, None, None, q.shape[2], k.shape[2], device=str(device)
                    )
                block_mask = masks[key]
            return compiled(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])

        return run_flex, ""
    return None, f"unknown baseline {name!r}"


def _default_baselines(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["torch.sdpa.flash", "torch.sdpa.cudnn", "torch.sdpa.efficient", "torch.flex"]
    return ["torch.sdpa"]


def _measure(fn: Callable[[], torch.Tensor], inputs: list[torch.Tensor], mode: str, timer, warmup_ms: float) -> float:
    if mode == "fwd":
        with torch.no_grad():
            return timer(fn, warmup_ms)
    grad_out: list[torch.Tensor] = []

    def fwd_bwd():
        for t in inputs:
            t.grad = None
        out = fn()
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])

    return timer(fwd_bwd, warmup_ms)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    dtype = DTYPES[args.dtype or ("bfloat16" if on_cuda else "float32")]
    seqlens = [
        int(s) for s in (args.seqlens or ("512,1024,2048,4096,8192,16384" if on_cuda else "256,512,1024")).split(",")
    ]
    head_dims = [int(d) for d in args.head_dims.split(",")]
    tokens = args.tokens or (16384 if on_cuda else 2048)
    hidden = args.hidden or (2048 if on_cuda else 256)
    repeats = args.repeats or (10 if on_cuda else 3)
    rounds = args.rounds or (3 if on_cuda else 1)
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    modes = ["fwd", "fwd+bwd"] if args.mode == "both" else [args.mode]

    records = {r.name: r for r in portattn.list_backends()}
    if args.backends:
        backends = args.backends.split(",")
        unknown = [b for b in backends if b.partition(":")[0] not in records or b.partition(":")[2] not in ("", "fp8")]
        if unknown:
            print(f"unknown backend(s) {unknown}; known: {list(records)}", file=sys.stderr)
            return 2
    else:
        backends = [n for n, r in records.items() if r.available and r.backend is not None and n != "reference"]
    baselines = {"auto": _default_baselines(device), "none": []}.get(args.baselines, args.baselines.split(","))
    impls: dict[str, tuple[Callable | None, str]] = {b: _torch_impl(b, device) for b in baselines}

    grid = [(d, s, c, m) for d in head_dims for s in seqlens for c in causals for m in modes]
    total = len(grid) * (len(backends) + len(impls))
    points: list[Point] = []
    timer = _timer(device, repeats)
    done = 0
    for head_dim, seqlen, causal, mode in grid:
        batch = max(1, tokens // seqlen)
        heads = max(1, hidden // head_dim)
        heads_kv = args.heads_kv or heads
        gen = torch.Generator(device="cpu").manual_seed(0)
        requires_grad = mode == "fwd+bwd"

        def make(h, batch=batch, seqlen=seqlen, head_dim=head_dim, gen=gen, requires_grad=requires_grad):
            x = torch.randn(batch, seqlen, h, head_dim, generator=gen).to(device=device, dtype=dtype)
            return x.requires_grad_(requires_grad)

        q, k, v = make(heads), make(heads_kv), make(heads_kv)
        qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_(requires_grad) for x in (q, k, v))
        runs: list[tuple[str, Callable | None, list[torch.Tensor], str]] = []
        for name in backends:
            base, _, precision = name.partition(":")
            fn = partial(portattn.attention, q, k, v, causal=causal, backend=base, precision=precision or None)
            runs.append((name, fn, [q, k, v], ""))
        for name, (impl, why) in impls.items():
            fn = None if impl is None else partial(impl, qt, kt, vt, causal)
            runs.append((name, fn, [qt, kt, vt], why))
        # interleaved rounds: every implementation is timed once per round, so that a drift of the
        # GPU's clocks over the point's measurement hits all of them alike; the median round counts
        samples: dict[str, list[float]] = {name: [] for name, _, _, _ in runs}
        notes = {name: why for name, _, _, why in runs}
        for round_ in range(rounds):
            warmup_ms = WARMUP_MS if round_ == 0 else WARMUP_MS / 5  # later rounds follow busy ones
            for name, fn, inputs, _ in runs:
                if fn is None or notes[name] and not samples[name]:
                    continue  # unavailable, or it failed on the first round
                try:
                    samples[name].append(_measure(fn, inputs, mode, timer, warmup_ms))
                except Exception as exc:  # a kernel that refuses a shape is reported, not fatal
                    notes[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        for name, _, _, _ in runs:
            done += 1
            if not args.no_progress:
                bar = "#" * (30 * done // total)
                what = f"{name} d={head_dim} s={seqlen} {mode}{' causal' if causal else ''}"
                print(f"\r[{bar:<30}] {done}/{total} {what}   ", end="", file=sys.stderr, flush=True)
            ms = statistics.median(samples[name]) if samples[name] else None
            tf = None if ms is None else flops(batch, heads, seqlen, head_dim, causal, mode) / (ms * 1e-3) / 1e12
            spread = f"rounds {min(samples[name]):.4g}-{max(samples[name]):.4g} ms" if len(samples[name]) > 1 else ""
            note = notes[name] if ms is None else spread
            points.append(Point(name, mode, batch, seqlen, heads, heads_kv, head_dim, causal,
                                str(dtype).replace("torch.", ""), ms, tf, note))  # fmt: skip
            if args.json:  # after every point, so that a run cut short keeps what it measured
                _write_json(args.json, points, device, dtype)
    if not args.no_progress:
        print(file=sys.stderr)
    _print_table(points, device, dtype)
    if args.plot:
        return _plot(points, args.plot)
    return 0


def _write_json(path: str, points: list[Point], device: torch.device, dtype: torch.dtype) -> None:
    meta = {"device": _device_name(device), "torch": torch.__version__, "dtype": str(dtype),
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}  # fmt: skip
    with open(path, "w") as f:
        json.dump({"meta": meta, "points": [asdict(p) for p in points]}, f, indent=1)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _print_table(points: list[Point], device: torch.device, dtype: torch.dtype) -> None:
    from portattn.cli.table import render

    impls = list(dict.fromkeys(p.impl for p in points))
    shapes = list(dict.fromkeys((p.mode, p.head_dim, p.seqlen, p.causal, p.batch, p.heads) for p in points))
    by_key = {(p.mode, p.head_dim, p.seqlen, p.causal, p.batch, p.heads, p.impl): p for p in points}
    rows = []
    for mode, d, s, c, b, h in shapes:
        row: list[object] = [mode, d, s, "yes" if c else "no", f"{b}x{h}"]
        for impl in impls:
            p = by_key.get((mode, d, s, c, b, h, impl))
            row.append(f"{p.tflops:.2f}" if p and p.tflops is not None else "n/a")
        rows.append(row)
    print(f"TFLOP/s on {_device_name(device)}, {str(dtype).replace('torch.', '')} (n/a: see --json for the reason)")
    print(render(["mode", "d", "seqlen", "causal", "BxH"] + impls, rows))


def _plot(points: list[Point], path: str) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install portattn[bench])", file=sys.stderr)
        return 2
    panels = sorted({(p.mode, p.head_dim, p.causal) for p in points})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (mode, d, c) in zip(axes[0], panels, strict=True):
        for impl in dict.fromkeys(p.impl for p in points):
            sel = [p for p in points if (p.mode, p.head_dim, p.causal, p.impl) == (mode, d, c, impl) and p.tflops]
            if sel:
                ax.plot([p.seqlen for p in sel], [p.tflops for p in sel], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{mode}, d={d}{', causal' if c else ''}")
        ax.set_xlabel("seqlen")
        ax.set_ylabel("TFLOP/s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return 0
