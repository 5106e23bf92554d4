"""NF4-SERIALIZED: a 4-bit model saved and loaded again is the same model.

Unsloth maps `load_in_4bit=True` to pre-quantized `*-bnb-4bit` checkpoints, so the recipe's 4-bit weights usually come
from a serialized quant state, not from quantizing at load time. bitsandbytes once read a quant-state component of such
checkpoints with the wrong dtype (bitsandbytes #1949, fixed in #1971): the reloaded weights differed from the saved ones
while every load-time check (NF4-LOAD, NF4-ROUNDTRIP) passed. Here the recipe's 4-bit load is saved with
`save_pretrained` and read back with `from_pretrained` (the pre-quantized path), and every Linear4bit is compared: packed
codes, each quant-state field, the dequantized weight, and the model's logits on one prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _state_fields(state) -> dict:
    fields = {"absmax": state.absmax, "code": state.code, "blocksize": state.blocksize, "dtype": state.dtype,
              "shape": tuple(state.shape), "quant_type": state.quant_type, "offset": state.offset,
              "nested": state.nested}
    if state.nested:
        fields.update(nested_absmax=state.state2.absmax, nested_code=state.state2.code,
                      nested_blocksize=state.state2.blocksize, nested_dtype=state.state2.dtype)
    return fields


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu())))
    return a == b


@torch.no_grad()
def serialize_facts(model_dir: Path, out_dir: Path, device_map="cpu", prompt_ids: list[int] | None = None) -> dict:
    import bitsandbytes.functional as F
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from harness.quant import linear4bit_modules, load_4bit

    model = load_4bit(model_dir, device_map=device_map)
    model.save_pretrained(str(out_dir))
    with safe_open(str(Path(out_dir) / "model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), device_map=device_map)
    before, after = linear4bit_modules(model), linear4bit_modules(reloaded)
    facts = {"modules": len(before), "modules_reloaded": len(after), "modules_missing": sorted(set(before) ^ set(after)),
             "saved_quant_state_keys": sum("quant_state.bitsandbytes__" in k for k in keys),
             "packed_mismatches": 0, "quant_state_fields_differing": {}, "dequant_max_abs_diff": 0.0,
             "dequant_mismatched_modules": 0}
    for name in sorted(set(before) & set(after)):
        a, b = before[name].weight, after[name].weight
        facts["packed_mismatches"] += int((a.data != b.data).sum()) if a.data.shape == b.data.shape else a.data.numel()
        fa, fb = _state_fields(a.quant_state), _state_fields(b.quant_state)
        for field in sorted(set(fa) | set(fb)):
            if not _same(fa.get(field), fb.get(field)):
                facts["quant_state_fields_differing"][field] = facts["quant_state_fields_differing"].get(field, 0) + 1
        wa, wb = F.dequantize_4bit(a.data, a.quant_state), F.dequantize_4bit(b.data, b.quant_state)
        diff = float((wa.float() - wb.float()).abs().max())
        facts["dequant_max_abs_diff"] = max(facts["dequant_max_abs_diff"], diff)
        facts["dequant_mismatched_modules"] += diff > 0
    if prompt_ids:
        device = next(model.parameters()).device
        ids = torch.tensor([prompt_ids], device=device)
        first = model(ids).logits.float()
        # The same model twice: run-to-run noise of the kernels (0.0 on the CPU), what a reload may differ by at most.
        facts["logits_rerun_max_abs_diff"] = float((first - model(ids).logits.float()).abs().max())
        facts["logits_max_abs_diff"] = float((first - reloaded(ids).logits.float()).abs().max())
    return facts
