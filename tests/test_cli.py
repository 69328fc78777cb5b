"""The command line: ``info --json`` schema, ``check`` exit codes, a ``bench`` smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.fakes.dists import good, make_dist


def portattn_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "portattn", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


def test_info_json_schema():
    proc = portattn_cli("info", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"versions", "devices", "backends", "kernel_cache"}
    assert set(data["kernel_cache"]) == {"dir", "summary", "entries"}
    assert {"portattn", "python", "torch", "pluggy"} <= set(data["versions"])
    assert data["devices"][0]["device"] == "cpu"
    by_name = {b["name"]: b for b in data["backends"]}
    assert {"portable", "sdpa", "reference"} <= set(by_name)
    for b in data["backends"]:
        assert set(b) >= {"name", "origin", "available", "reason", "priority", "capabilities"}
    caps = by_name["portable"]["capabilities"]
    assert set(caps) >= {"devices", "dtypes", "head_dims", "features", "compute_capability"}
    assert "causal" in caps["features"] and "float16" in caps["dtypes"]


def test_info_table_shows_plugin_errors(tmp_path):
    make_dist(tmp_path, "portattn-broken", "broken", "portattn_cli_broken", "raise OSError('libvendor.so: not found')")
    proc = portattn_cli("info", PYTHONPATH=str(tmp_path), PORTATTN_DISABLE_PLUGIN_AUTOLOAD="0")
    assert proc.returncode == 0, proc.stderr
    assert "broken" in proc.stdout and "libvendor.so: not found" in proc.stdout
    assert "portable" in proc.stdout


def test_check_passes_on_the_builtins():
    proc = portattn_cli("check", "--backend", "portable", "--backend", "sdpa", "--dtype", "float32", "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    results = json.loads(proc.stdout)
    assert {r["status"] for r in results} <= {"pass", "unsupported"}
    assert sum(r["status"] == "pass" for r in results) >= 30
    assert all(r["errors"]["out"] < 1e-4 for r in results if r["status"] == "pass")


def test_check_fails_on_a_wrong_plugin(tmp_path):
    make_dist(tmp_path, "portattn-wrong", "wrong", "portattn_cli_wrong", good("wrong", priority=5, factor=1.001))
    proc = portattn_cli(
        "check",
        "--backend",
        "wrong",
        "--dtype",
        "float32",
        PYTHONPATH=str(tmp_path),
        PORTATTN_DISABLE_PLUGIN_AUTOLOAD="0",
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    assert "FAIL wrong-float32" in proc.stdout and "outside atol" in proc.stdout


def test_check_unknown_backend_exit_code():
    assert portattn_cli("check", "--backend", "nope").returncode == 2


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = portattn_cli(
        "bench", "--seqlens", "64,128", "--head-dims", "32", "--tokens", "256", "--hidden", "64",
        "--mode", "both", "--repeats", "1", "--backends", "portable,sdpa", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "TFLOP/s" in proc.stdout and "torch.sdpa" in proc.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["device"] == "cpu"
    impls = {p["impl"] for p in data["points"]}
    assert impls == {"portable", "sdpa", "torch.sdpa"}
    assert len(data["points"]) == 2 * 2 * 2 * 3  # seqlens x causal x modes x impls
    assert all(p["tflops"] and p["tflops"] > 0 for p in data["points"])


def test_bench_rounds_and_fp8_spec(tmp_path):
    """Interleaved rounds leave their spread in the note; NAME:fp8 is timed as its own implementation
    (here refused: no FP8 backend on this CPU) and a reason is recorded, not a crash."""
    out = tmp_path / "bench.json"
    proc = portattn_cli(
        "bench", "--seqlens", "64", "--head-dims", "32", "--tokens", "128", "--hidden", "64", "--causal", "no",
        "--repeats", "1", "--rounds", "2", "--backends", "portable,portable:fp8", "--baselines", "none",
        "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    points = {p["impl"]: p for p in json.loads(out.read_text())["points"]}
    assert points["portable"]["note"].startswith("rounds ") and points["portable"]["tflops"] > 0
    assert points["portable:fp8"]["tflops"] is None and "fp8" in points["portable:fp8"]["note"]
