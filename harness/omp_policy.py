"""The test process's OpenMP wait policy, and the spinning its llama.cpp children get back.

conftest.py makes OpenMP threads that wait sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the caller
chose: for most of a CPU session the tiny fine-tune runs beside the tests (tests/slow/finetune_tiny_run.py), so torch's
threads share the cores with it, and a thread spinning at a barrier holds a core the other process needs. On 2 cores
(2026-11-29) `certify` took 112.0 s instead of 118.9 s, user CPU 177 s instead of 195 s, the same verdicts. It must be
set before torch is imported (libgomp reads it once, when it loads); the wait policy changes when threads sleep, never
what they compute. Not on a machine with an NVIDIA GPU: there every child process (fine-tunes, probes, the step
timings' servers) would inherit it and the GPU benchmarks' baselines would move without a word.

llama.cpp's children get spinning back (`child_env`): a child decodes alone on its cores and spinning is faster there
(the 270M check took 12.7 s spinning, 17.2 s sleeping, 2 cores, 2026-11-29).

No imports beyond the standard library: conftest.py loads this before torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SET_BY_SUITE = "HARNESS_OMP_PASSIVE_SET"  # present where sleep_waiting_threads set the policy (not the caller)


def has_nvidia_gpu() -> bool:
    return Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists()


def sleep_waiting_threads() -> bool:
    """OMP_WAIT_POLICY=PASSIVE for this process and its children, where the caller chose none, torch is not loaded yet
    and there is no NVIDIA GPU; True where it was set here."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules or has_nvidia_gpu():
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ[SET_BY_SUITE] = "1"
    return True


def child_env(env: dict) -> dict:
    """`env` for a llama.cpp child: the policy back to OpenMP's default where sleep_waiting_threads set it."""
    env = dict(env)
    if env.pop(SET_BY_SUITE, None):
        env.pop("OMP_WAIT_POLICY", None)
    return env
