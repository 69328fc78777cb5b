"""``import portattn`` stays light: torch and pluggy only; optional libraries load on first use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("triton", "cupy", "torch_npu")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_import_does_not_load_optional_libraries():
    proc = run_python(
        """
        import json, sys
        import portattn
        portattn.list_backends()  # building the registry must not load them either
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)))
        """.replace("HEAVY", repr(HEAVY))
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_import_survives_a_broken_optional_library(tmp_path):
    for name in HEAVY:
        (tmp_path / f"{name}.py").write_text("raise ImportError('simulated: vendor runtime missing')\n")
    proc = run_python(
        """
        import portattn, torch
        out = portattn.attention(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8))
        print(out.shape)
        """,
        PYTHONPATH=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert "torch.Size([1, 4, 2, 8])" in proc.stdout
