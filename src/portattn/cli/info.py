"""``portattn info``: what this machine can do, and why not where it cannot."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform

import portattn
from portattn import _kernel_cache
from portattn._device import describe_devices
from portattn.cli.table import render

OPTIONAL = ("triton", "cupy-cuda13x", "cupy-cuda12x", "cupy", "torch-npu")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, object]:
    """Versions, devices and backend records (no optional library is imported to learn its version)."""
    import torch

    versions = {
        "portattn": portattn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "pluggy": _version("pluggy"),
    }
    versions.update({name: _version(name) for name in OPTIONAL if _version(name)})
    cached = _kernel_cache.entries()
    return {
        "versions": versions,
        "devices": describe_devices(),
        "backends": [r.as_dict() for r in portattn.list_backends()],
        "kernel_cache": {
            "dir": str(_kernel_cache.cache_dir()),
            "summary": _kernel_cache.summary(cached),
            "entries": [e._asdict() for e in cached],
        },
    }


def run(args: argparse.Namespace) -> int:
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v))
    print("devices:  " + ", ".join(
        d["device"] + (f" ({d['name']}, sm {d['compute_capability']})" if "compute_capability" in d else "")
        for d in data["devices"]
    ))  # fmt: skip
    rows = []
    for b in data["backends"]:
        caps = b["capabilities"] or {}
        status = "available" if b["available"] else f"no: {b['reason']}"
        dims = caps.get("head_dims", "")
        rows.append([
            b["name"], b["origin"], b["priority"] if b["priority"] is not None else "", status,
            ",".join(d.replace("float", "f") for d in caps.get("dtypes", [])),
            ",".join(map(str, dims)) if isinstance(dims, list) else dims,
            ",".join(caps.get("features", [])),
        ])  # fmt: skip
    print()
    print(render(["backend", "origin", "prio", "status", "dtypes", "head dims", "features"], rows))
    print()
    for b in data["backends"]:
        if b.get("description"):
            print(f"{b['name']}: {b['description']}")
    print()
    print(data["kernel_cache"]["summary"])
    return 0
