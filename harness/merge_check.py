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


# merged_vs_trained's measurement: 2 adds the base's top-1 agreement and the share of training's move the merge carries
# (spec.checklist.check_merge requires them from records of this method on)
METHOD = 2


@torch.no_grad()
def merged_vs_trained(model, merged_dir: Path, prompt_ids: list[list[int]]) -> dict:
    """Max |logit| differences (float32) merged↔trained and base↔trained over every position of the prompts; the merged
    model's and the base's top-1 agreement with the trained one; and the share of training's move (trained − base, in
    logits) that the merge carries: Σ⟨merged − base, trained − base⟩ / Σ‖trained − base‖² over every position and
    vocabulary entry (1 for a merge that adds the adapter's move whatever else it adds, 0 for one that drops it, the
    scale for one that scales it).

    Why more than the maxima: their ratio is a maximum over ~680 M logits divided by another, set by single outliers. On
    the GPU (Unsloth's merged_16bit of an on-the-fly QLoRA model, the same versions) it read 2.28 to 7.95 over the stored
    clean runs of 2026-11-28/29, while the merged model's top-1 agreement with the trained one stayed 0.834 to 0.913 and
    the merge that drops the adapter read 0.133 and 0.156 (reports/examples/h200-2026-11-29-gpu-tier-s20 says which)."""
    from transformers import AutoModelForCausalLM

    device = next(model.parameters()).device
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.bfloat16 if device.type == "cuda"
                                                  else torch.float32).to(device).eval()
    was_training = model.training
    model.eval()
    worst = {"merged_vs_trained": 0.0, "base_vs_trained": 0.0}
    agree = base_agree = positions = 0
    carried = moved = 0.0  # Σ⟨merged − base, trained − base⟩ and Σ‖trained − base‖² (each prompt's in float32)
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
            move = (trained - base).flatten()  # dot products: one temporary of the logits' size at a time
            carried += float(torch.dot((out - base).flatten(), move))
            moved += float(torch.dot(move, move))
            del move
    finally:
        model.train(was_training)
        del merged
    return {"prompts": len(prompt_ids), "positions": positions, "method": METHOD,
            "merged_vs_trained_max_abs": worst["merged_vs_trained"], "base_vs_trained_max_abs": worst["base_vs_trained"],
            "merged_top1_agreement": agree / max(1, positions), "base_top1_agreement": base_agree / max(1, positions),
            "training_move_carried": carried / moved if moved > 0 else math.nan}
