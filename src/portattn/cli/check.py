"""``portattn check``: every available backend on the case battery, against the float64 reference."""

from __future__ import annotations

import argparse
import json

import torch

import portattn
from portattn.cli.table import render
from portattn.testing import check_backend, default_cases

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = tuple(DTYPES[d] for d in (args.dtype or list(DTYPES)))
    records = {r.name: r for r in portattn.list_backends()}
    names = args.backend or [n for n, r in records.items() if r.available and r.backend is not None]
    unknown = [n for n in names if n not in records or records[n].backend is None]
    if unknown:
        print(f"unknown backend(s): {', '.join(unknown)}; known: {', '.join(records)}")
        return 2
    cases = default_cases(args.level)
    results = []
    for name in names:
        results += check_backend(name, cases, device=device, dtypes=dtypes, grad=not args.no_grad)
    failed = [r for r in results if r.status == "fail"]
    if args.json:
        print(json.dumps([
            {"backend": r.backend, "case": r.case.name, "dtype": str(r.dtype).replace("torch.", ""),
             "device": r.device, "status": r.status, "errors": r.errors, "message": r.message}
            for r in results
        ], indent=2))  # fmt: skip
    else:
        rows = []
        for r in results:
            errs = " ".join(f"{k}={v:.1e}" for k, v in r.errors.items())
            note = r.message if r.status != "pass" else ""
            rows.append([r.backend, str(r.dtype).replace("torch.", ""), r.case.name, r.status, errs, note[:100]])
        print(render(["backend", "dtype", "case", "status", "max |error|", "note"], rows))
        counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "unsupported")}
        print(f"\ndevice {device}: {counts['pass']} passed, {counts['fail']} failed, "
              f"{counts['unsupported']} unsupported (the backend's own reasons)")  # fmt: skip
        for r in failed:
            print(f"FAIL {r.id}: {r.message}")
    return 1 if failed else 0
