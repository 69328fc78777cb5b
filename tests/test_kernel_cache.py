"""The CUDA kernel cache on disk (``portattn._kernel_cache``), without cupy: keys, records, damage, the
``portattn info`` line. The GPU test (tests/test_gpu.py) checks that a second process loads, not compiles."""

from __future__ import annotations

import hashlib
import json

import pytest

from portattn import _kernel_cache
from portattn.cli import info


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(_kernel_cache.CACHE_ENV, str(tmp_path / "kernels"))
    return tmp_path / "kernels"


def _entry(binary: bytes, seconds: float = 2.5, target: str = "sm_90") -> _kernel_cache.Entry:
    return _kernel_cache.Entry("portattn::k<64>", "_Z1kILi64EEvv", target, seconds, "cupy 14.2.0, nvrtc 13.0",
                               hashlib.sha256(binary).hexdigest())  # fmt: skip


def test_key_changes_with_everything_that_changes_the_binary():
    base = ("src", ("-std=c++17",), "portattn::k<64>", "sm_90", "cupy 14.2.0, nvrtc 13.0")
    keys = {_kernel_cache.key(*base)}
    for i, other in enumerate(["src2", ("-O2",), "portattn::k<128>", "sm_80", "cupy 14.2.0, nvrtc 12.8"]):
        keys.add(_kernel_cache.key(*base[:i], other, *base[i + 1 :]))
    assert len(keys) == 6
    assert _kernel_cache.key(*base) == _kernel_cache.key(*base)  # and stable


def test_store_then_lookup(cache):
    assert _kernel_cache.lookup("k1") is None
    binary = bytes(range(256)) * 7
    path = _kernel_cache.store("k1", binary, _entry(binary))
    assert path == cache / "k1.cubin" and path.read_bytes() == binary
    found_path, entry = _kernel_cache.lookup("k1")
    assert found_path == path and entry == _entry(binary)
    assert not list(cache.glob(".tmp-*"))  # written through temporaries that were renamed


def test_damaged_or_partial_entries_are_misses(cache):
    binary = b"\x7fELF" + b"x" * 100
    _kernel_cache.store("k1", binary, _entry(binary))
    (cache / "k1.cubin").write_bytes(binary[:-1])  # truncated
    assert _kernel_cache.lookup("k1") is None
    _kernel_cache.store("k2", binary, _entry(binary))
    (cache / "k2.json").write_text("{not json")
    assert _kernel_cache.lookup("k2") is None
    _kernel_cache.store("k3", binary, _entry(binary))
    (cache / "k3.cubin").unlink()
    assert _kernel_cache.lookup("k3") is None


def test_info_reports_the_cache(cache, capsys):
    assert "empty" in _kernel_cache.summary()
    for i, seconds in enumerate([1.25, 4.0, 2.0]):
        binary = f"binary {i}".encode()
        _kernel_cache.store(f"k{i}", binary, _entry(binary, seconds, "sm_80" if i else "sm_90"))
    line = _kernel_cache.summary()
    assert str(cache) in line and "3 compiled kernels (sm_80, sm_90)" in line
    assert "1.2-4.0 s" in line and "median 2.0 s" in line
    data = info.collect()["kernel_cache"]
    assert data["dir"] == str(cache) and sorted(e["seconds"] for e in data["entries"]) == [1.25, 2.0, 4.0]
    info.run(type("Args", (), {"json": False})())
    assert "3 compiled kernels" in capsys.readouterr().out
    info.run(type("Args", (), {"json": True})())
    assert json.loads(capsys.readouterr().out)["kernel_cache"]["summary"] == line


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(_kernel_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _kernel_cache.cache_dir() == tmp_path / "portattn" / "kernels"
