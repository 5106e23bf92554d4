"""Deterministic measurements cached by the content they are a function of: bytes, code and library versions.

Parsing a GGUF with gguf-py takes 7-8 s on 2 cores (its 262,144-token vocabulary is read element by
element), and the float32 HF greedy reference for the 270M takes ~27 s for 20 prompts: together more
than half of a warm `certify` (measured 2026-11-27). Each is a pure function of its inputs, so its result
is stored under a key built from everything it depends on: the sha256 of the files read, the source of
the harness modules that compute it, the versions of the libraries it calls (and, for float work, the
CPU's vector features). A change to any of them is a new key and a fresh measurement; the thing under
test (an exporter's bytes, llama.cpp's answers) is still produced and read in every run.

Entries are JSON (never pickle: a shared cache must not be able to run code) and carry the sha256 of
their value; an entry that does not match it is measured again, and the run says so.
Set HARNESS_MEASUREMENT_CACHE=0 to measure everything afresh (the fault-injection runs do: a planted
runtime patch models a library upgrade, whose new version would change the key).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from harness.cache import cache_root, sha256_file

ENV = "HARNESS_MEASUREMENT_CACHE"
FORMAT = 1


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> str:
    return sha256_file(Path(path))


def file_digest(path: Path) -> str:
    """sha256 of a file, computed once per process for an unchanged file: same size, mtime, inode and ctime (a copy
    that keeps the mtime, `os.utime` or a rename over the file changes the ctime or the inode)."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def folder_digest(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {name: file_digest(Path(folder) / name) for name in names if (Path(folder) / name).is_file()}


def code_digest(*code) -> str:
    """sha256 over the source of the code that computes a measurement: functions (their own source, so an
    unrelated edit elsewhere in their module keeps the cache) or whole modules."""
    digest = hashlib.sha256()
    for item in code:
        if inspect.ismodule(item):
            digest.update(Path(inspect.getsourcefile(item)).read_bytes())
        else:
            digest.update(inspect.getsource(item).encode())
    return digest.hexdigest()[:16]


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@functools.lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ()
    return tuple(sorted(line.split(":", 1)[1].split()))


@functools.lru_cache(maxsize=1)
def cpu_signature() -> str:
    """The CPU features float kernels dispatch on (torch and numpy pick AVX2/AVX-512/AMX paths at run time)."""
    import platform

    wide = [f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c"))]
    return f"{platform.machine()}:{','.join(wide)}"


def entry_key(kind: str, inputs: dict) -> str:
    """The cache key of a result of `kind` computed from `inputs` (also for cached files: harness.llama_cpp_vendor)."""
    return _key(kind, inputs)


def _key(kind: str, inputs: dict) -> str:
    text = json.dumps({"format": FORMAT, "kind": kind, "python": sys.version_info[:2], **inputs}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _value_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def cached(kind: str, inputs: dict, compute: Callable[[], dict], log=None) -> dict:
    """compute() once per distinct `inputs` (which must name every input the result depends on)."""
    if not enabled():
        return compute()
    folder = cache_root() / "measurements" / kind
    path = folder / f"{_key(kind, inputs)}.json"
    if path.is_file():
        try:
            entry = json.loads(path.read_text())
            if _value_digest(entry["value"]) == entry["sha256"]:
                return entry["value"]
            reason = "its sha256 does not match its value"
        except (OSError, ValueError, KeyError) as exc:
            reason = f"unreadable ({type(exc).__name__})"
        print(f"measurement cache: {path} {reason}: measuring again", file=sys.stderr)
    value = compute()
    value = json.loads(json.dumps(value))  # the stored form: a hit must return exactly what a miss returns
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump({"kind": kind, "inputs": inputs, "sha256": _value_digest(value), "value": value}, handle,
                  sort_keys=True, default=str)
    os.replace(tmp, path)
    return value
