"""Measurements that compare bitsandbytes' NF4 with the reference implementation and with the handbook's formula."""

from __future__ import annotations

import torch

from harness import nf4


def reference_vs_bnb(tensors: list[torch.Tensor]) -> dict:
    """NF4-REFERENCE: packed codes, dequantized values and absmax codes, with and without double quant."""
    import bitsandbytes.functional as F

    packed_bad = deq_bad = absmax_bad = absmax_total = 0
    absmax_dist = 0
    cases = 0
    for weight in tensors:
        for double in (False, True):
            cases += 1
            packed, state = F.quantize_4bit(weight, blocksize=nf4.BLOCKSIZE, compress_statistics=double, quant_type="nf4")
            ours = nf4.quantize(weight, double_quant=double)
            packed_bad += int((packed.view(-1) != ours.packed.view(-1)).sum())
            theirs = F.dequantize_4bit(packed, state).float()
            if double:
                absmax_total += ours.absmax.numel()
                diff = (state.absmax.long() - ours.absmax.long()).abs()
                absmax_bad += int((diff > 0).sum())
                absmax_dist = max(absmax_dist, int(diff.max()))
                # Dequantize bitsandbytes' own state with the reference dequantizer: bit-exact or not.
                ours = nf4.NF4Tensor(packed, state.absmax, tuple(weight.shape), float(state.offset), state.state2.absmax)
            deq_bad += int((nf4.dequantize(ours) != theirs).sum())
    return {"cases": cases, "packed_mismatches": packed_bad, "dequant_mismatches": deq_bad,
            "absmax_mismatches": absmax_bad, "absmax_values": absmax_total, "absmax_max_code_distance": absmax_dist}


def roundtrip(n01: torch.Tensor, real: dict[str, torch.Tensor]) -> dict:
    """NF4-ROUNDTRIP over N(0,1) and real weights.

    Without double quant every element is within 0.1519·absmax of its block. With double quant the
    absmax in use is itself 8-bit approximate, so the bound becomes 0.1519·absmax + |absmax − absmax_dq|;
    violations of that are counted too.
    """
    import bitsandbytes.functional as F

    from spec.quantization import NF4_MAX_ERR_OVER_ABSMAX as BOUND

    worst, per_tensor, dq_violations, dq_worst_excess = 0.0, {}, 0, float("-inf")
    for name, w in [("N(0,1)", n01), *real.items()]:
        w = w.float()
        true_absmax = _block_absmax(w)
        for double in (False, True):
            packed, state = F.quantize_4bit(w, blocksize=nf4.BLOCKSIZE, compress_statistics=double, quant_type="nf4")
            err = _block_view((w - F.dequantize_4bit(packed, state).float()).abs())
            if not double:
                ratio = float((err / true_absmax.view(-1, 1)).max())
                per_tensor[name] = round(ratio, 6)
                worst = max(worst, ratio)
            else:
                used = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
                used = used[: true_absmax.numel()]
                excess = err - (BOUND * true_absmax + (true_absmax - used).abs() + 1e-7).view(-1, 1)
                dq_violations += int((excess > 0).sum())
                dq_worst_excess = max(dq_worst_excess, float(excess.max()))
    packed, state = F.quantize_4bit(n01, blocksize=nf4.BLOCKSIZE, compress_statistics=False, quant_type="nf4")
    back = F.dequantize_4bit(packed, state).float()
    err = (n01 - back).abs()
    return {"max_err_over_absmax": round(worst, 6), "per_tensor": per_tensor, "tensors": len(per_tensor),
            "double_quant_bound_violations": dq_violations,
            "mean_abs_n01": round(float(err.mean()), 6), "mean_rel_n01": round(float((err / (n01.abs() + 1e-8)).mean()), 6),
            "n01_elements": n01.numel()}


def _block_view(flat: torch.Tensor) -> torch.Tensor:
    flat = flat.reshape(-1)
    return flat[: flat.numel() - flat.numel() % nf4.BLOCKSIZE].reshape(-1, nf4.BLOCKSIZE)


def _block_absmax(w: torch.Tensor) -> torch.Tensor:
    return _block_view(w).abs().max(dim=-1)[0]


def formula(n01: torch.Tensor) -> dict:
    """NF4-FORMULA: the NF4 codes vs a uniform 16-level round(), and the error each gives on N(0,1)."""
    import bitsandbytes.functional as F

    codes = F.get_4bit_type("nf4", device="cpu").tolist()
    uniform = torch.linspace(-1, 1, 16).tolist()
    packed, state = F.quantize_4bit(n01, blocksize=nf4.BLOCKSIZE, quant_type="nf4")
    nf4_err = float((F.dequantize_4bit(packed, state).float() - n01).abs().mean())
    uni_err = float((nf4.uniform_round(n01) - n01).abs().mean())
    return {"codes": codes, "codes_differ_from_uniform": round(max(abs(a - b) for a, b in zip(sorted(codes), uniform)), 6),
            "nf4_mean_err": round(nf4_err, 6), "uniform_mean_err": round(uni_err, 6)}
