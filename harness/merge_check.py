"""MERGE-IS-TRAINED: the merged 16-bit checkpoint an export is made from is the model that was trained.

Real merges have dropped or mis-scaled the adapter (unsloth #869, #1929, #2009, #2142, #5410): every check that reads
only the merged folder or the GGUF made from it passes such a merge. Here the merged folder's logits are compared
with the in-memory adapter model's (the model the trainer trained) and with that model's base (adapters disabled),
on held-out prompts: a faithful merge sits at rounding distance from the trained model, far from the base.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in one pass over the difference (aminmax), NaN if any difference is NaN. The same number as
    (a - b).abs().max(), without a second 262k-vocabulary-wide tensor: on the tiny model's 8 prompts the check took
    8.2 s of a certify, 0.17 s per prompt and pair in abs().max() (2 cores, 2026-11-28)."""
    low, high = torch.aminmax(a - b)
    return float(torch.maximum(high, -low))


def worse(current: float, new: float) -> float:
    """The running maximum, NaN once any value was NaN. Python's max(0.0, nan) is 0.0: a merged model with NaN
    logits read as max |Δ| 0, perfect agreement, until 2026-11-28."""
    return math.nan if math.isnan(current) or math.isnan(new) else max(current, new)


# merged_vs_trained's measurement (spec.checklist.check_merge reads records by it): 2 added the base's top-1 agreement
# and a share of training's move in logits; 3 (2026-11-29) replaced that share, which saturates (an adapter merged twice
# read 0.89 on a CPU stand-in of the 270M) and which Unsloth's quantization term moves, by the weight-space one,
# merged_weights_carry_adapter
METHOD = 3


@torch.no_grad()
def merged_vs_trained(model, merged_dir: Path, prompt_ids: list[list[int]]) -> dict:
    """Max |logit| differences (float32) merged↔trained and base↔trained over every position of the prompts; the merged
    model's and the base's top-1 agreement with the trained one.

    Why more than the maxima: their ratio is a maximum over ~680 M logits divided by another, set by single outliers. On
    the GPU (Unsloth's merged_16bit of an on-the-fly QLoRA model, the same versions) it read 2.28 to 7.95 over the stored
    clean runs of 2026-11-28/29, while the merged model's top-1 agreement with the trained one stayed 0.834 to 0.913 and
    the merge that drops the adapter read 0.133 and 0.156 (reports/examples/h200-2026-11-29-gpu-tier-s20 says which).
    Whether each adapted weight is in the merge is merged_weights_carry_adapter's to say."""
    from transformers import AutoModelForCausalLM

    device = next(model.parameters()).device
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.bfloat16 if device.type == "cuda"
                                                  else torch.float32).to(device).eval()
    was_training = model.training
    model.eval()
    worst = {"merged_vs_trained": 0.0, "base_vs_trained": 0.0}
    agree = base_agree = positions = 0
    try:
        for ids in prompt_ids:
            x = torch.tensor([list(ids)], device=device)
            trained = model(input_ids=x).logits.float()
            with model.disable_adapter():
                base = model(input_ids=x).logits.float()
            out = merged(input_ids=x).logits.float()
            worst["merged_vs_trained"] = worse(worst["merged_vs_trained"], max_abs_difference(out, trained))
            worst["base_vs_trained"] = worse(worst["base_vs_trained"], max_abs_difference(base, trained))
            top1 = trained.argmax(-1)
            agree += int((out.argmax(-1) == top1).sum())
            base_agree += int((base.argmax(-1) == top1).sum())
            positions += trained.shape[1]
    finally:
        model.train(was_training)
        del merged
    return {"prompts": len(prompt_ids), "positions": positions, "method": METHOD,
            "merged_vs_trained_max_abs": worst["merged_vs_trained"], "base_vs_trained_max_abs": worst["base_vs_trained"],
            "merged_top1_agreement": agree / max(1, positions), "base_top1_agreement": base_agree / max(1, positions)}


def _weight_key(name: str) -> str:
    """One key for a weight however it is prefixed: checkpoints and PEFT wrappers name the same layer differently
    ("model.layers.3…", "base_model.model.model.layers.3…", "model.language_model.layers.3…"): from "layers." on, else
    without PEFT's "base_model.model." (an adapted lm_head: "lm_head.weight" in both)."""
    at = name.find("layers.")
    return name[at:] if at >= 0 else name.removeprefix("base_model.model.")


def _by_weight_key(names) -> dict[str, str]:
    """{_weight_key(name): name} over a checkpoint's tensor names."""
    return {_weight_key(name): name for name in names}


def _tensors(folder: Path) -> dict[str, Path]:
    """Each tensor name of a safetensors checkpoint (one file or shards) and the file that holds it."""
    from safetensors import safe_open

    where = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            where.update({key: file for key in handle.keys()})
    return where


@torch.no_grad()
def merged_weights_carry_adapter(model, merged_dir: Path, source_dir: Path) -> dict:
    """For each LoRA-adapted linear layer of the trained `model`: the share of its update s·B·A that the merged checkpoint
    adds to the source checkpoint's weight, ⟨W_merged − W_source, s·B·A⟩ / ‖s·B·A‖² (1 for a merge of the adapter as
    trained, up to 16-bit rounding, which is not along the update; 0 where it is dropped; the factor where it is scaled;
    ~0 where another layer's update went in). Unsloth's merged_16bit adds the adapter to the pristine 16-bit weights
    (unsloth_zoo merge_and_overwrite_lora), the weights a QLoRA run loaded from `source_dir`, so its quantization term
    is not in this difference at all. Returns the adapted modules, those whose weight the merged checkpoint lacks,
    those whose source weight is not 16-bit (a pre-quantized source: not measurable here), and the smallest and largest
    share with their modules.

    Why in weights: the logits' share of training's move saturates (a CPU stand-in of the 270M, the adapter merged twice:
    0.89; at 1.5 times: 0.96) and an adapter dropped from the attention or from 6 of 18 layers still read 0.66-0.71
    there, inside any band that keeps clean runs green (a review of 2026-11-29)."""
    import contextlib

    from safetensors import safe_open

    merged_at, source_at = _tensors(merged_dir), _tensors(source_dir)
    merged_names, source_names = _by_weight_key(merged_at), _by_weight_key(source_at)
    shares, missing, source_not_16bit = {}, [], []
    with contextlib.ExitStack() as files:
        handles: dict[Path, object] = {}  # each safetensors file opened once, not twice per adapted layer

        def tensor(where: dict[str, Path], key: str):
            if where[key] not in handles:
                handles[where[key]] = files.enter_context(safe_open(str(where[key]), "pt"))
            return handles[where[key]].get_tensor(key)

        for name, module in model.named_modules():
            lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
            if not lora_a or not lora_b or not hasattr(module, "scaling"):
                continue
            for adapter in lora_a:
                if adapter not in lora_b:
                    continue
                suffix = _weight_key(f"{name}.weight")
                if suffix not in merged_names:
                    missing.append(name)
                    continue
                update = ((lora_b[adapter].weight.float() @ lora_a[adapter].weight.float()).cpu()
                          * float(module.scaling[adapter]))
                merged_weight = tensor(merged_at, merged_names[suffix]).float()
                if merged_weight.shape != update.shape:
                    missing.append(name)
                    continue
                source_weight = tensor(source_at, source_names[suffix]) if suffix in source_names else None
                if source_weight is None or not source_weight.is_floating_point() or source_weight.shape != update.shape:
                    # a pre-quantized source (bitsandbytes' packed 4-bit): its 16-bit weights are not in the folder
                    source_not_16bit.append(name)
                    continue
                size = float(torch.dot(update.flatten(), update.flatten()))
                moved = (merged_weight - source_weight.float()).flatten()
                shares[suffix.removesuffix(".weight")] = (float(torch.dot(moved, update.flatten())) / size if size > 0
                                                          else math.nan)
    finite = {k: v for k, v in shares.items() if not math.isnan(v)}
    low = min(finite, key=finite.get) if finite else None
    high = max(finite, key=finite.get) if finite else None
    return {"adapted_modules": len(shares) + len(missing) + len(source_not_16bit), "modules_not_in_checkpoints": missing[:10],
            "modules_not_in_checkpoints_count": len(missing),
            # layers whose source weight is not a 16-bit tensor of the update's shape: nothing to measure the merge against
            "modules_without_a_16bit_source": len(source_not_16bit),
            "modules_with_no_update": sorted(k for k, v in shares.items() if math.isnan(v))[:10],
            "weight_share_min": finite[low] if low else None, "weight_share_min_module": low,
            "weight_share_max": finite[high] if high else None, "weight_share_max_module": high}
