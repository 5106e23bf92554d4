"""The §1/§2 checks on synthetic and recorded measurements: each can come out green, and each goes red when the
measured fact moves (LORA-SCALING, LORA-DELTA, NF4-DOUBLE-QUANT, GC-VRAM, GC-MECHANISM)."""

import copy
import json
from pathlib import Path

import pytest

import spec
from spec.core import evaluate

ROOT = Path(__file__).resolve().parents[2]
# The six recorded GC-VRAM grids (H100 ×3, H200 ×3); the bounds' comment in spec/quantization.py cites them.
RECORDED_GRIDS = [
    "reports/examples/h100-2026-11-25/results-gpu-tier.json",
    "reports/examples/h100-2026-11-26/results-gpu-tier.json",
    "reports/examples/h100-2026-11-27-partial-all-tiers/partial-gpu-tier-results.json",
    "reports/examples/h200-2026-11-26-certify/results.json",
    "reports/examples/h200-2026-11-26-tier/results.json",
    "reports/examples/h200-2026-11-26/results-grid-e2e2-incomplete.json",
]


def _recorded_grid(path: str) -> list[dict]:
    claims = {c["id"]: c for c in json.loads((ROOT / path).read_text())["claims"]}
    return claims["GC-VRAM"]["evidence"]["gpu"]["grid"]


def _outcome(claim_id, measurements, context):
    return evaluate(spec.CLAIMS[claim_id], measurements, context)


# --- LORA-SCALING ---------------------------------------------------------------------------------------------------

def test_scaling_green_when_every_module_applies_the_recipes_alpha_over_r():
    o = _outcome("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": [2.0] * 126}, "gemma3-270m")
    assert not o.regression and o.verdict == "corrected" and o.evidence["modules_off_recipe"] == 0


@pytest.mark.parametrize("scalings", [[64.0] * 126, [2.0] * 125 + [1.0], [11.3137] * 126])
def test_scaling_red_when_a_measured_factor_leaves_the_recipe(scalings):
    """α instead of α/r, one module at 1.0, rsLoRA's α/√r: each is red; alpha_over_r (recipe arithmetic) stays 2.0."""
    o = _outcome("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": scalings}, "gemma3-270m")
    assert o.regression and o.evidence["alpha_over_r"] == 2.0


def test_scaling_alpha_over_r_is_no_longer_a_bound():
    assert "alpha_over_r" not in {b.key for b in spec.CLAIMS["LORA-SCALING"].bounds}


# --- LORA-DELTA -----------------------------------------------------------------------------------------------------

DELTA = {"merge_err": 3.7e-9, "forward_err": 0.0, "unscaled_err": 0.0416, "merge_tol": 1e-5, "forward_tol": 1e-5,
         "dtype": "float32", "modules": 42}


def test_delta_green_on_the_measured_float32_errors():
    o = _outcome("LORA-DELTA", DELTA, "tiny")
    assert not o.regression and o.verdict == "corrected"


def test_delta_red_when_merge_and_forward_disagree_with_the_recipe_scale():
    o = _outcome("LORA-DELTA", {**DELTA, "merge_err": 0.387}, "tiny")
    assert o.regression and o.verdict == "fail"


def test_delta_gpu_bounds_apply_in_the_gpu_context():
    bf16 = {**DELTA, "merge_err": 3.9e-3, "forward_err": 1.87e-2, "unscaled_err": 0.78, "merge_tol": 2e-2,
            "forward_tol": 5e-2, "dtype": "bfloat16", "modules": 126}
    assert not _outcome("LORA-DELTA", bf16, "gpu").regression
    assert _outcome("LORA-DELTA", {**bf16, "forward_err": 0.06}, "gpu").regression


# --- NF4-DOUBLE-QUANT -----------------------------------------------------------------------------------------------

# measured on the embedded Gemma 3 270M (CPU load, bitsandbytes 0.50.2)
DQ = {"nested": True, "modules": 126, "blocksize": 64, "nested_blocksize": 256, "absmax_dtype": "uint8",
      "quantized_params": 100270080, "quantized_bytes": 51726240, "formula_bytes": 51726240.0,
      "measured_bits_per_param": 4.126953, "padding_params": 0, "nested_padding_absmax": 0}


def test_double_quant_green_on_the_measured_storage():
    assert not _outcome("NF4-DOUBLE-QUANT", DQ, "gemma3-270m").regression


def test_double_quant_red_on_a_plain_4bit_load():
    """The same load with double quant off measured 4.5 bits/param (56,401,920 bytes), absmax float32."""
    plain = {**DQ, "nested": False, "nested_blocksize": 0, "absmax_dtype": "float32", "quantized_bytes": 56401920,
             "formula_bytes": 51701760.0, "measured_bits_per_param": 4.5}
    o = _outcome("NF4-DOUBLE-QUANT", plain, "gemma3-270m")
    assert o.regression and any("measured_bits_per_param" in v for v in o.violations)


def test_double_quant_red_when_only_the_storage_moves():
    """A nested block of 512 (4.125977 bits/param) keeps every layout flag the verdict reads: the bound catches it."""
    o = _outcome("NF4-DOUBLE-QUANT", {**DQ, "measured_bits_per_param": 4.125977}, "gemma3-270m")
    assert o.verdict == "pass" and o.regression


def test_double_quant_constants_are_evidence_only():
    keys = {b.key for b in spec.CLAIMS["NF4-DOUBLE-QUANT"].bounds}
    assert keys.isdisjoint({"bits_per_param_double", "bits_per_param_plain", "bytes_vs_formula"})


# --- GC-VRAM --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", RECORDED_GRIDS)
def test_gc_vram_green_on_every_recorded_grid(path):
    o = _outcome("GC-VRAM", {"grid": _recorded_grid(path), "model": "gemma3-270m"}, "gpu")
    assert not o.regression, o.explain()
    assert o.evidence["saving_total_at_4096x8"] == 0.1758


def _with_unsloth_peak(grid, peak):
    """The grid with each "unsloth" row's peak replaced by peak(row, the True row of its shape)."""
    grid = copy.deepcopy(grid)
    standard = {(r["seq"], r["batch"]): r for r in grid if r["mode"] == "True"}
    for row in grid:
        if row["mode"] == "unsloth":
            row["peak_allocated_mib"] = round(peak(row, standard[(row["seq"], row["batch"])]), 1)
    return grid


def test_gc_vram_red_when_unsloth_mode_saves_one_percent():
    """17.6% → 1% at every shape: still ≥ 0 (the old bound passed it) and still `corrected`, but red."""
    grid = _with_unsloth_peak(_recorded_grid(RECORDED_GRIDS[1]), lambda row, std: 0.99 * std["peak_allocated_mib"])
    o = _outcome("GC-VRAM", {"grid": grid, "model": "gemma3-270m"}, "gpu")
    assert o.verdict == "corrected" and o.evidence["max_saving_total"] == 0.01
    assert o.regression and len(o.violations) == 4


def test_gc_vram_green_within_a_mib_red_beyond_the_tolerance():
    """+1 MiB on the unsloth peak at 4096×8 moves the saving by 3.1e-4 (green); +20 MiB by 6.3e-3 (red)."""
    base = _recorded_grid(RECORDED_GRIDS[0])

    def bump(mib):
        return _with_unsloth_peak(base, lambda row, std: row["peak_allocated_mib"] + (mib if row["seq"] == 4096 and
                                                                                     row["batch"] == 8 else 0))

    assert not _outcome("GC-VRAM", {"grid": bump(1.0)}, "gpu").regression
    o = _outcome("GC-VRAM", {"grid": bump(20.0)}, "gpu")
    assert o.regression and [v.split(" ")[0] for v in o.violations] == ["saving_total_at_4096x8"]


# --- GC-MECHANISM ---------------------------------------------------------------------------------------------------

# What the profiled probe should measure on Gemma 3 270M at 2048 × 2 if unsloth_zoo behaves as its source reads:
# 18 layer inputs of 2·2048·640·2 bytes, 17 of them copied to pinned memory, every layer recomputed in backward.
LAYER_INPUT = 2 * 2048 * 640 * 2
OFFLOADING = {
    "checkpoint_function": "unsloth_zoo.gradient_checkpointing.unsloth_checkpoint",
    "layer_checkpoint_functions": {"torch.utils.checkpoint.checkpoint": 18}, "checkpointed_layers": 18,
    "activation_bytes": 18 * LAYER_INPUT, "dtoh_pinned_bytes_forward": 17 * LAYER_INPUT, "dtoh_pageable_bytes_forward": 8,
    "layer_calls_forward": 18, "layer_calls_backward": 18, "unsloth_kernel_names_known": 209,
    "unsloth_triton_kernels_in_backward": 2, "unsloth_triton_kernels_in_checkpoint_backward": 0,
    "inductor_triton_kernels_in_backward": 1368, "errors": {},
}


def test_mechanism_green_when_layers_offload_and_recompute_without_unsloth_kernels():
    """Unsloth kernels elsewhere in the backward (e.g. a fused loss) do not count when the launches were attributed."""
    o = _outcome("GC-MECHANISM", OFFLOADING, "gpu")
    assert not o.regression and o.verdict == "corrected"
    assert o.evidence["offloaded_fraction"] == round(17 / 18, 4)
    assert o.evidence["unsloth_kernels_counted_over"] == "checkpointed layers' backward"


@pytest.mark.parametrize("change", [
    {"dtoh_pinned_bytes_forward": 0, "dtoh_pageable_bytes_forward": 8},  # a device→host copy, but no offload
    {"dtoh_pinned_bytes_forward": 3 * LAYER_INPUT},  # 3 of 18 layers offloaded: 0.167 < 0.4
    {"layer_calls_backward": 0},  # no recompute: activations kept
    {"unsloth_triton_kernels_in_checkpoint_backward": 36},  # Unsloth's kernels now run in the layers' backward
    {"unsloth_triton_kernels_in_checkpoint_backward": None},  # attribution failed: the 2 kernels count
    {"activation_bytes": None, "errors": {"layer_calls": "RuntimeError: hooks"}},  # a measurement failed
    {"unsloth_kernel_names_known": 0},  # cannot tell Unsloth's kernels from others
])
def test_mechanism_red_when_a_measured_fact_moves(change):
    o = _outcome("GC-MECHANISM", {**OFFLOADING, **change}, "gpu")
    assert o.regression and o.verdict != "corrected", o.explain()


def test_mechanism_pass_is_the_handbooks_description_and_is_red_against_the_record():
    """Unsloth's kernels in the layers' backward and no offload: the handbook would be right, which is not recorded."""
    o = _outcome("GC-MECHANISM", {**OFFLOADING, "dtoh_pinned_bytes_forward": 0,
                                  "unsloth_triton_kernels_in_checkpoint_backward": 36}, "gpu")
    assert o.verdict == "pass" and o.regression


def test_gc_mechanism_as_measured_on_the_h200_and_a_planted_chain_rule_kernel():
    """The H200's measurement (2026-11-27): pinned offload of 17/18 layer inputs, recompute, and inside the checkpointed
    backward only Unsloth's NF4 dequantization (252 = 18 layers × 7 projections × 2) → `corrected`. Real change that
    turns it red: an Unsloth kernel that computes gradients (its GEGLU backward) inside the checkpointed layers."""
    from spec.core import evaluate
    import spec

    measured = {"activation_bytes": 94371840, "dtoh_pinned_bytes_forward": 89128966, "layer_calls_forward": 18,
                "layer_calls_backward": 18, "unsloth_triton_kernels_in_backward": 253, "unsloth_kernel_names_known": 306,
                "unsloth_triton_kernels_in_checkpoint_backward": 252,
                "unsloth_kernel_counts_in_checkpoint_backward": {"_nf4_dequant_kernel": 252}}
    outcome = evaluate(spec.CLAIMS["GC-MECHANISM"], measured, "gpu")
    assert outcome.verdict == "corrected" and not outcome.regression, outcome.explain()
    planted = {**measured, "unsloth_triton_kernels_in_checkpoint_backward": 270,
               "unsloth_kernel_counts_in_checkpoint_backward": {"_nf4_dequant_kernel": 252, "_exact_backward_kernel": 18}}
    assert evaluate(spec.CLAIMS["GC-MECHANISM"], planted, "gpu").regression


def test_gc_fallback_as_measured_and_a_planted_threshold_change():
    """Measured on the H200 (2026-11-27): standard checkpointing at max_seq_length 256, Unsloth's at 4096 → `pass`.
    Real change that turns it red: Unsloth installs its offloaded checkpoint below 512 too (or stops installing it)."""
    from spec.core import evaluate
    import spec

    measured = {"function_below_512": "torch.utils.checkpoint.checkpoint",
                "function_at_or_above_512": "unsloth_zoo.gradient_checkpointing.unsloth_checkpoint"}
    assert not evaluate(spec.CLAIMS["GC-FALLBACK"], measured, "gpu").regression
    for planted in ({**measured, "function_below_512": measured["function_at_or_above_512"]},
                    {**measured, "function_at_or_above_512": measured["function_below_512"]}):
        assert evaluate(spec.CLAIMS["GC-FALLBACK"], planted, "gpu").regression
