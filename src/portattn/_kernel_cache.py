"""The on-disk cache of the CUDA kernels that the CuPy backends compile at first use (no cupy here).

CuPy's own disk cache is not read for modules compiled with ``name_expressions`` (it recompiles to learn
the mangled names), so every process would compile every template instance again. Each instance is kept
here as its binary (``<key>.cubin``) and a record (``<key>.json``: the instance, its symbol, the target,
the toolchain and the compile time it took). The key hashes the source text, the options, the instance,
the target and the toolchain (CuPy and NVRTC versions), so any change compiles afresh.

``PORTATTN_CACHE_DIR`` moves the cache (default ``$XDG_CACHE_HOME/portattn/kernels``, else
``~/.cache/portattn/kernels``). ``portattn info`` reports what is cached and how long it took to compile.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

CACHE_ENV = "PORTATTN_CACHE_DIR"


class Entry(NamedTuple):
    name: str  # the template instance, as C++
    symbol: str  # its (mangled) name in the binary
    target: str  # e.g. "sm_90"
    seconds: float  # how long NVRTC took to compile it
    toolchain: str  # e.g. "cupy 14.2.0, nvrtc 13.0"
    sha256: str  # of the binary


def cache_dir() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "portattn" / "kernels"


def key(source: str, options: tuple[str, ...], name: str, target: str, toolchain: str) -> str:
    """What identifies a binary: everything that changes what NVRTC produces."""
    return hashlib.sha256(json.dumps([source, list(options), name, target, toolchain]).encode()).hexdigest()


def lookup(cache_key: str) -> tuple[Path, Entry] | None:
    """The cached binary's path and record, or None when it is missing, unreadable or damaged."""
    record, binary = cache_dir() / f"{cache_key}.json", cache_dir() / f"{cache_key}.cubin"
    try:
        entry = Entry(**json.loads(record.read_text()))
        if hashlib.sha256(binary.read_bytes()).hexdigest() != entry.sha256:
            return None
    except (OSError, ValueError, TypeError):
        return None
    return binary, entry


def writable() -> bool:
    """Whether binaries can be kept (checked before compiling, so that a read-only cache costs one compile)."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(cache_dir(), os.W_OK)


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)  # readers (other processes too) never see a partial file


def store(cache_key: str, binary: bytes, entry: Entry) -> Path | None:
    """Keep a compiled binary; its path, or None when the cache cannot be written (read-only, full)."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(directory / f"{cache_key}.cubin", binary)
        _write_atomically(directory / f"{cache_key}.json", json.dumps(entry._asdict()).encode())
    except OSError:
        return None
    return directory / f"{cache_key}.cubin"


def entries() -> list[Entry]:
    """Every readable record in the cache."""
    found = []
    for record in sorted(cache_dir().glob("*.json")):
        try:
            found.append(Entry(**json.loads(record.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return found


def summary(found: list[Entry] | None = None) -> str:
    """One line for ``portattn info``: where the cache is, what it holds (``found``, else read from the
    cache), what first calls cost."""
    found = entries() if found is None else found
    where = f"CUDA kernel cache: {cache_dir()} (set {CACHE_ENV} to move it)"
    if not found:
        return f"{where}: empty; a CuPy backend's first call compiles each kernel it needs (seconds each)"
    seconds = sorted(e.seconds for e in found)
    targets = ", ".join(sorted({e.target for e in found}))
    return (
        f"{where}: {len(found)} compiled kernels ({targets}); compiling one took {seconds[0]:.1f}-{seconds[-1]:.1f} s "
        f"(median {seconds[len(seconds) // 2]:.1f} s) on the first call that needed it, later processes load it"
    )
