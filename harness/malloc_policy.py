"""glibc's malloc told to keep the memory a CPU fine-tune frees, for a process that does nothing else.

glibc serves blocks over its mmap threshold (32 MB at most) with mmap and unmaps them when freed, and returns the
heap's free top to the system past a trim threshold. A CPU fine-tune of Gemma 3 allocates each step's logits afresh
(2 rows × ~300 tokens × 262,144 entries × 4 B), so every step faulted those pages in again: the tiny reference run
spent 15.2 s of system time in 69.3 s on 2 cores. Kept (no mmap, no trimming) it took 59.4 s with 2.4 s of system
time and the same losses and outputs to the last digit (2026-11-29, through glibc's environment variables); set here
by mallopt, 70.3 → 58.1 s, system time 15.5 → 2.6 s, train 26.3 → 19.0 s, losses and outputs identical, peak RSS 3.0 →
4.0 GB. The process then holds its peak memory until it exits, so this is for `python -m harness finetune` on a CPU
only (HARNESS_KEEP_FREED_MEMORY=0 leaves it out): never the pytest process, never a GPU run (its figures stay as
measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h


def keep_freed_memory() -> bool:
    """mallopt(M_MMAP_MAX, 0) and the largest trim threshold mallopt takes (2 GiB − 1: an int) for this process;
    False where the C library is not glibc (the call is then left out)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
