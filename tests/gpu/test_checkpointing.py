"""The GPU tier's checkpointing probes: peak VRAM per mode over a grid, and what the "unsloth" mode does.

Unsloth patches torch and transformers globally, so each probe runs in a fresh process (harness.gpu_probe), started
with the session beside the fine-tunes (harness.probe_runs); these tests read what the probes measured.
"""

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.gpu_phase(1)]  # after the in-process tests, while the probes run


@pytest.mark.claim("GC-VRAM")
@pytest.mark.uses_probes("vram-False", "vram-True", "vram-unsloth")
def test_gc_vram_grid(gpu_probes, perf_model, certify, run_extras):
    """Peak VRAM of a QLoRA step per checkpointing mode over seq × batch, each mode in a fresh process."""
    # The modes run beside each other and beside other probes and the fine-tunes: peak memory is counted per process,
    # so the figures stay exact; the step times interfere, and are marked so.
    rows = []
    for mode in ("unsloth", "True", "False"):
        rows += [{**row, "concurrent_probes": True} for row in gpu_probes.result(f"vram-{mode}")["rows"]]
    run_extras["vram_grid"] = rows
    certify("GC-VRAM", {"grid": rows, "model": perf_model[0]}, "gpu")


@pytest.mark.claim("GC-MECHANISM", "GC-FALLBACK")
@pytest.mark.uses_probes("checkpoint-4096-profile", "checkpoint-256")
def test_gc_mechanism_and_fallback(gpu_probes, perf_model, certify):
    """At 4096 the decoder layers' checkpoint copies their inputs to pinned host memory in the forward and recomputes
    them in backward, with no Unsloth Triton kernel but its NF4 dequantization in their backward; at 256 the unsloth
    mode falls back."""
    long = gpu_probes.result("checkpoint-4096-profile")
    short = gpu_probes.result("checkpoint-256")
    pinned = (long.get("host_memory") or {}).get("allocated_bytes.all.peak", 0)
    # Everything the probe measured goes to the check (a hand-picked key list once dropped the per-kernel counts the
    # check reads, and the H200 run of 2026-11-27 went red for it).
    certify("GC-MECHANISM", {**long, "pinned_host_mib": round(pinned / 2**20, 1), "model": perf_model[0]}, "gpu", soft=True)
    certify("GC-FALLBACK", {"function_below_512": short["checkpoint_function"],
                            "function_at_or_above_512": long["checkpoint_function"],
                            "layer_functions_below_512": short.get("layer_checkpoint_functions"),
                            "layer_functions_at_or_above_512": long.get("layer_checkpoint_functions")}, "gpu", soft=True)
    certify.check()
