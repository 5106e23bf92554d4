"""The GPU tier's checkpointing probes: peak VRAM per mode over a grid, and what the "unsloth" mode does.

Unsloth patches torch and transformers globally, so each probe runs in a fresh process (harness.gpu_probe).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

GRID = os.environ.get("HARNESS_VRAM_GRID", "512x1,512x8,1024x1,1024x8,2048x1,2048x8,4096x1,4096x8")


def _probe(*args, env=None, timeout=900) -> dict:
    run_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "harness.gpu_probe", *args], capture_output=True, text=True,
                          timeout=timeout, env=run_env)
    if proc.returncode != 0:
        raise AssertionError(f"probe {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.claim("GC-VRAM")
def test_gc_vram_grid(perf_model, certify, run_extras):
    """Peak VRAM of a QLoRA step per checkpointing mode over seq × batch, each mode in a fresh process."""
    env = {**os.environ, "UNSLOTH_COMPILE_DISABLE": os.environ.get("UNSLOTH_COMPILE_DISABLE", "1")}
    # The three modes run at once (peak memory is counted per process, so they do not disturb each other's
    # figures; the grid's largest, 4096×8 without checkpointing, needs ~27 GiB). Their step times do
    # interfere, and are marked so.
    procs = [subprocess.Popen([sys.executable, "-m", "harness.gpu_probe", "vram", "--model", str(perf_model[1]), "--mode", mode,
                               "--shapes", GRID], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for mode in ("unsloth", "True", "False")]
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=1500)
        if proc.returncode != 0:
            raise AssertionError(f"vram probe failed:\n{err[-3000:]}")
        rows += [{**row, "concurrent_modes": 3} for row in json.loads(out.strip().splitlines()[-1])["rows"]]
    run_extras["vram_grid"] = rows
    certify("GC-VRAM", {"grid": rows, "model": perf_model[0]}, "gpu")


@pytest.mark.claim("GC-MECHANISM", "GC-FALLBACK")
def test_gc_mechanism_and_fallback(perf_model, certify):
    """At 4096 the decoder layers' checkpoint copies their inputs to pinned host memory in the forward and recomputes
    them in backward, with no Unsloth Triton kernel but its NF4 dequantization in their backward; at 256 the unsloth
    mode falls back."""
    long = _probe("checkpoint", "--model", str(perf_model[1]), "--max-seq-length", "4096", "--profile")
    short = _probe("checkpoint", "--model", str(perf_model[1]), "--max-seq-length", "256")
    pinned = (long.get("host_memory") or {}).get("allocated_bytes.all.peak", 0)
    # Everything the probe measured goes to the check (a hand-picked key list once dropped the per-kernel counts the
    # check reads, and the H200 run of 2026-11-27 went red for it).
    certify("GC-MECHANISM", {**long, "pinned_host_mib": round(pinned / 2**20, 1), "model": perf_model[0]}, "gpu", soft=True)
    certify("GC-FALLBACK", {"function_below_512": short["checkpoint_function"],
                            "function_at_or_above_512": long["checkpoint_function"],
                            "layer_functions_below_512": short.get("layer_checkpoint_functions"),
                            "layer_functions_at_or_above_512": long.get("layer_checkpoint_functions")}, "gpu", soft=True)
    certify.check()
