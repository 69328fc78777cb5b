"""The documentation is tested: the plugin walkthrough runs, the Quick start is two commands, links resolve.

``docs/writing-a-backend.md`` is executed block by block: every fenced block whose info string is
exactly ``python`` runs, in order, in one namespace. Blocks tagged ``python no-run`` (or any other
language) are shown to the reader but not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import portattn
import portattn._registry as registry
from portattn.testing import assert_close, attention_reference, default_cases, run_case

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
WALKTHROUGH = DOCS / "writing-a-backend.md"
EXAMPLE_NAME = "naive_fp32"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """``(info string, body, line of the opening fence)`` for every fenced block."""
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def run_python_blocks(path: Path) -> dict[str, object]:
    """Execute the ``python`` blocks of ``path`` in order, in one namespace; return the namespace."""
    text = path.read_text(encoding="utf-8")
    blocks = [(body, line) for info, body, line in code_blocks(text) if info == "python"]
    assert blocks, f"{path.name} has no ```python blocks to run"
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for body, line in blocks:
        # Pad with newlines so that tracebacks point at the line of the Markdown file.
        code = compile("\n" * line + body, str(path), "exec")
        exec(code, namespace)
    return namespace


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch):
    """Built-in backends only (no installed plugins, no forced backend), and a clean registry afterwards."""
    monkeypatch.setenv("PORTATTN_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("PORTATTN_BACKEND", raising=False)
    registry.reset()
    yield
    registry.reset()


def test_walkthrough_marks_its_blocks() -> None:
    infos = [info for info, _, _ in code_blocks(WALKTHROUGH.read_text(encoding="utf-8"))]
    assert infos.count("python") >= 5
    assert "python no-run" in infos
    toml = [body for info, body, _ in code_blocks(WALKTHROUGH.read_text(encoding="utf-8")) if info == "toml"]
    assert any('[project.entry-points.portattn]\nnaive = "portattn_naive.plugin"' in body for body in toml)


def test_writing_a_backend_example(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run_python_blocks(WALKTHROUGH)

    # registered, at run time, next to the built-ins
    records = {r.name: r for r in portattn.list_backends()}
    assert EXAMPLE_NAME in records, sorted(records)
    record = records[EXAMPLE_NAME]
    assert record.available and record.origin == registry.RUNTIME
    assert {"portable", "sdpa", "reference"} <= set(records)
    backend = record.backend
    assert isinstance(backend, ns["NaiveFP32Backend"])
    assert isinstance(backend, portattn.Backend)

    # the hook defined on the page returns backends of the example class
    hooked = ns["portattn_backends"]()
    assert [type(b) for b in hooked] == [ns["NaiveFP32Backend"]]

    # backend="naive_fp32" really runs it: count calls to its forward
    calls = []
    real_forward = backend.forward

    def spy(call, q, k, v):
        calls.append(call)
        return real_forward(call, q, k, v)

    monkeypatch.setattr(backend, "forward", spy)
    gen = torch.Generator().manual_seed(123)
    q = torch.randn(1, 21, 4, 16, generator=gen)
    k = torch.randn(1, 29, 2, 16, generator=gen)
    v = torch.randn(1, 29, 2, 16, generator=gen)
    out, lse = portattn.attention(q, k, v, causal=True, return_lse=True, backend=EXAMPLE_NAME)
    assert len(calls) == 1
    assert portattn.explain(q, k, v, causal=True, backend=EXAMPLE_NAME, quiet=True).chosen == EXAMPLE_NAME
    with portattn.use_backend(EXAMPLE_NAME):
        portattn.attention(q, k, v)
    assert len(calls) == 2
    portattn.attention(q, k, v)  # portable has the higher priority
    assert len(calls) == 2

    # ... and agrees with the float64 reference
    ref_out, ref_lse = attention_reference(calls[0], q, k, v)
    assert_close(out, ref_out, atol=1e-4, rtol=1e-4, what="out")
    assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4, what="lse")

    # the conformance battery: never "fail", and most cases run
    monkeypatch.setattr(backend, "forward", real_forward)
    results = [run_case(backend, case, dtype=torch.float32, seed=i) for i, case in enumerate(default_cases())]
    statuses = {r.case.name: r.status for r in results}
    failures = {r.case.name: r.message for r in results if r.status not in ("pass", "unsupported")}
    assert not failures, failures
    assert sum(s == "pass" for s in statuses.values()) >= 5, statuses
    assert all({"out", "lse", "dq", "dk", "dv"} <= set(r.errors) for r in results if r.status == "pass")


def test_readme_python_runs(clean_registry: None, capsys: pytest.CaptureFixture[str]) -> None:
    run_python_blocks(README)
    assert "chosen" in capsys.readouterr().out  # portattn.explain printed its table


def quick_start_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Quick start[ \t]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Quick start' section"
    commands = []
    for _, body, _ in code_blocks(match.group(1)):
        for line in body.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line.removeprefix("$ "))
    return commands


def test_quick_start_is_two_commands() -> None:
    assert quick_start_commands() == ["make demo", "make test"]


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = INLINE_CODE.sub("", text)
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, https:, mailto:, in-page anchors
        targets.append(target.split("#", 1)[0])
    return targets


DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    missing = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_docs_exist() -> None:
    for name in ("architecture.md", "writing-a-backend.md", "environment.md"):
        assert (DOCS / name).is_file(), name
    assert (DOCS / "writing-a-backend.md").relative_to(ROOT).as_posix() in [
        (README.parent / t).resolve().relative_to(ROOT).as_posix() for t in relative_links(README)
    ]
