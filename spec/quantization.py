"""Handbook §2, "Memory Surgery": 4-bit NF4 loading with double quantization, and gradient checkpointing."""

from __future__ import annotations

import statistics

from spec.core import Claim, eq, ge, le, near, verdict_if

SECTION = "2. 4-bit and checkpointing"

# The 16 NF4 codes (bitsandbytes' published codebook, quantiles of N(0,1) normalized to [-1, 1]).
NF4_CODES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
# Half the widest gap between neighbouring codes: no element can be further from its code.
NF4_MAX_ERR_OVER_ABSMAX = max(b - a for a, b in zip(NF4_CODES, NF4_CODES[1:])) / 2
BITS_PLAIN = 4 + 32 / 64  # 4-bit codes + one fp32 absmax per 64 weights
BITS_DOUBLE = 4 + 8 / 64 + 32 / (64 * 256)  # 8-bit absmax per 64 + one fp32 per 256 absmax


def check_load(m: dict) -> tuple[str, dict]:
    """m: adapted_projections, linear4bit, quant_types, compute_dtypes, embed_quantized, lm_head_quantized."""
    evidence = dict(m)
    ok = (m["linear4bit"] == m["adapted_projections"] and m["quant_types"] == ["nf4"]
          and m["compute_dtypes"] == ["bfloat16"] and not m["embed_quantized"] and not m["lm_head_quantized"])
    return verdict_if(ok, "pass"), evidence


def check_double_quant(m: dict) -> tuple[str, dict]:
    """m: nested (all quant states nested), blocksize, nested_blocksize, absmax_dtype, quantized_bytes, formula_bytes."""
    evidence = dict(m)
    evidence["bits_per_param_double"] = round(BITS_DOUBLE, 4)
    evidence["bits_per_param_plain"] = round(BITS_PLAIN, 4)
    evidence["bytes_vs_formula"] = round(m["quantized_bytes"] / m["formula_bytes"], 6)
    ok = m["nested"] and m["blocksize"] == 64 and m["nested_blocksize"] == 256 and m["absmax_dtype"] == "uint8"
    return verdict_if(ok, "pass"), evidence


def check_roundtrip(m: dict) -> tuple[str, dict]:
    """m: max_err_over_absmax (over all blocks, N(0,1) and real weights), mean_abs_n01, mean_rel_n01, tensors."""
    evidence = dict(m)
    evidence["bound_over_absmax"] = round(NF4_MAX_ERR_OVER_ABSMAX, 6)
    ok = m["max_err_over_absmax"] <= NF4_MAX_ERR_OVER_ABSMAX + 1e-6
    return verdict_if(ok, "pass"), evidence


def check_formula(m: dict) -> tuple[str, dict]:
    """m: codes (bitsandbytes' NF4 map), codes_differ_from_uniform, nf4_mean_err, uniform_mean_err."""
    evidence = {
        "codes": [round(c, 7) for c in m["codes"]],
        "codes_differ_from_uniform": m["codes_differ_from_uniform"],
        "nf4_mean_abs_err": m["nf4_mean_err"], "uniform_round_mean_abs_err": m["uniform_mean_err"],
        "truth": "NF4 maps W/absmax (absmax per 64-block) to the nearest of 16 fixed normal-quantile codes; "
                 "it is not round(W/S) on a uniform grid",
    }
    ok = all(abs(a - b) < 1e-7 for a, b in zip(m["codes"], NF4_CODES)) and m["codes_differ_from_uniform"] > 0.05
    return verdict_if(ok, "corrected"), evidence


def check_reference(m: dict) -> tuple[str, dict]:
    """m: cases, packed_mismatches, dequant_mismatches (reference dequantizer on bitsandbytes' state),
    absmax_mismatches and absmax_max_code_distance (reference 8-bit nearest-code quantizer of the absmax
    values vs bitsandbytes' CPU binary search, double quant only)."""
    evidence = dict(m)
    evidence["note"] = ("bitsandbytes' CPU 8-bit quantizer (BinSearch Direct2) is not exactly nearest-code for tiny "
                        "centred absmax values; where it differs from the nearest code it is one code away")
    ok = (m["packed_mismatches"] == 0 and m["dequant_mismatches"] == 0 and m["absmax_max_code_distance"] <= 1)
    return verdict_if(ok, "pass"), evidence


def check_gc_vram(m: dict) -> tuple[str, dict]:
    """m: grid = [{seq, batch, mode, peak_allocated_mib, peak_reserved_mib, weights_mib, oom}], reference shape."""
    by_shape: dict[tuple, dict] = {}
    for row in m["grid"]:
        by_shape.setdefault((row["seq"], row["batch"]), {})[row["mode"]] = row
    savings, act_savings = [], []
    table = []
    for (seq, batch), modes in sorted(by_shape.items()):
        std, uns = modes.get("True"), modes.get("unsloth")
        if not std or not uns or std.get("oom") or uns.get("oom"):
            continue
        total = 1 - uns["peak_allocated_mib"] / std["peak_allocated_mib"]
        act_std = std["peak_allocated_mib"] - std["weights_mib"]
        act = 1 - (uns["peak_allocated_mib"] - uns["weights_mib"]) / act_std if act_std > 0 else 0.0
        savings.append(total)
        act_savings.append(act)
        table.append({"seq": seq, "batch": batch, "saving_total": round(total, 4), "saving_activation": round(act, 4)})
    best = max(act_savings) if act_savings else None
    evidence = {"shapes": table, "median_saving_total": round(statistics.median(savings), 4) if savings else None,
                "max_saving_activation": round(best, 4) if best is not None else None,
                "max_saving_total": round(max(savings), 4) if savings else None, "grid": m["grid"],
                "model": m.get("model")}
    if not savings:
        return "fail", evidence
    if max(savings) <= 0.0 and best <= 0.0:
        return "refuted", evidence
    # "~30%": within 22.5–37.5% on total peak at the shapes where it matters most.
    return ("pass" if 0.225 <= max(savings) <= 0.375 else "corrected"), evidence


def check_gc_mechanism(m: dict) -> tuple[str, dict]:
    """m: checkpoint_function, offloads_to_pinned_host (bool), pinned_host_mib, triton_kernels_in_backward, kernels_sample."""
    evidence = dict(m)
    evidence["truth"] = ("offloaded checkpointing: each layer's input hidden state goes to pinned CPU memory and the "
                         "layer is recomputed in backward by autograd; no Triton kernel executes the chain rule")
    if m["triton_kernels_in_backward"] > 0 and not m["offloads_to_pinned_host"]:
        return "pass", evidence
    return verdict_if(m["offloads_to_pinned_host"], "corrected"), evidence


def check_activation(m: dict) -> tuple[str, dict]:
    """m: hidden_activation (from the model config), mlp_act_fn (the module class in the model)."""
    evidence = dict(m)
    evidence["truth"] = "Gemma 3's MLP is down(gelu_tanh(gate(x)) * up(x)); the activation is GELU (tanh approx.), not SiLU"
    if m["hidden_activation"] == "silu":
        return "pass", evidence
    return verdict_if(m["hidden_activation"] in ("gelu_pytorch_tanh", "gelu"), "corrected"), evidence


def check_fallback(m: dict) -> tuple[str, dict]:
    """m: function_below_512 and function_at_or_above_512 (qualified names of the checkpoint function in use)."""
    evidence = dict(m)
    ok = "unsloth" not in m["function_below_512"] and "unsloth" in m["function_at_or_above_512"]
    return verdict_if(ok, "pass"), evidence


CLAIMS = [
    Claim("NF4-LOAD", SECTION, "both", "load_in_4bit = True, # 4-bit NormalFloat (NF4)",
          "Linear4bit nf4 for every adapted projection, bf16 compute, embeddings/lm_head unquantized", "pass",
          check_load, (eq("quant_types", ["nf4"]),), {"gemma3-270m": (eq("linear4bit", 126),)}),
    Claim("NF4-DOUBLE-QUANT", SECTION, "both", "Uses Double Quantization. It quantizes the weights to 4 bits, then quantizes the quantization constants",
          "nested quant state (blocksize 64, nested 256, 8-bit absmax): ≈4.127 bits/param vs 4.5", "pass",
          check_double_quant, (eq("nested", True), near("bytes_vs_formula", 1.0, 0.002), near("bits_per_param_double", 4.127, 0.0005))),
    Claim("NF4-ROUNDTRIP", SECTION, "both", "It quantizes the weights to 4 bits",
          "every element within 0.1519·absmax of its block; N(0,1) mean abs ≤ 0.0733, mean rel ≤ 0.2057", "pass",
          check_roundtrip, (le("max_err_over_absmax", round(NF4_MAX_ERR_OVER_ABSMAX, 6) + 1e-6), le("mean_abs_n01", 0.0733), le("mean_rel_n01", 0.2057),
                            eq("double_quant_bound_violations", 0)),
          {"gpu": (le("model_state_excess_over_bound", 0.0),)}),
    Claim("NF4-FORMULA", SECTION, "cpu", "Math: W_q = round(W / S), where S is the scale factor",
          "NF4 maps W/absmax to the nearest of 16 normal-quantile codes, not a uniform round()", "corrected",
          check_formula, (ge("codes_differ_from_uniform", 0.05),)),
    Claim("NF4-REFERENCE", SECTION, "cpu", "4-bit NormalFloat (NF4)",
          "this project's NF4 reproduces bitsandbytes' packed codes and dequantized values bit-exactly, with and without double quant", "pass",
          check_reference, (eq("packed_mismatches", 0), eq("dequant_mismatches", 0), ge("cases", 4))),
    Claim("GC-VRAM", SECTION, "gpu", 'use_gradient_checkpointing = "unsloth" … saving ~30% VRAM',
          'peak VRAM of a QLoRA step: "unsloth" vs True vs False over seq × batch; saving vs standard checkpointing', "corrected",
          check_gc_vram, (ge("max_saving_total", 0.0),)),
    Claim("GC-MECHANISM", SECTION, "gpu", "This triggers a custom Triton kernel that manually executes the Chain Rule during the backward pass",
          "what the unsloth mode really does: offload + recompute; whether any Triton kernel executes the chain rule", "corrected",
          check_gc_mechanism, (eq("offloads_to_pinned_host", True),)),
    Claim("GC-ACTIVATION", SECTION, "cpu", "It discards the activation H = SiLU(x × W)",
          "Gemma 3's MLP activation is gelu_pytorch_tanh (model config)", "corrected",
          check_activation, (eq("hidden_activation", "gelu_pytorch_tanh"),)),
    Claim("GC-FALLBACK", SECTION, "gpu", 'use_gradient_checkpointing = "unsloth"',
          "below max_seq_length 512 the unsloth mode falls back to standard checkpointing", "pass",
          check_fallback, ()),
]
