"""Where the harness keeps what it builds once (models, vocabularies), and how it builds safely.

A cache entry is a folder that appears in one atomic rename, so a reader sees it whole or not at
all. Builders hold an exclusive file lock, so two processes that materialize at once do the work
once; a build killed mid-way leaves only a `*.partial-*` folder that the next build removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

CACHE_ENV = "HARNESS_CACHE"


def cache_root() -> Path:
    """The cache folder: `$HARNESS_CACHE`, else `~/.cache/handbook-suite`."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "handbook-suite"
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block's duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock_path(target: Path) -> Path:
    """The file build_once locks while it builds `target`."""
    return target.with_name(target.name + ".lock")


def would_build_here(target: Path, is_complete: Callable[[Path], bool]) -> bool:
    """Whether build_once(target, …) called now would build in this process: the entry is incomplete and no other
    process holds its lock (one that does is building it, and build_once would wait for it)."""
    if is_complete(target):
        return False
    lock = _lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return True


def build_once(target: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> Path:
    """Return `target`, building it with `build(tmpdir)` first if it is missing or incomplete.

    `build` writes into a fresh temporary sibling folder; it is renamed onto `target` only when
    `build` returned and `is_complete` accepts it.
    """
    if is_complete(target):
        return target
    with exclusive_lock(_lock_path(target)):
        if is_complete(target):  # another process finished while we waited for the lock
            return target
        for stale in target.parent.glob(target.name + ".partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        try:
            build(tmp)
            if not is_complete(tmp):
                raise RuntimeError(f"building {target.name} finished without a complete result in {tmp}")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
