"""harness.merge_check's arithmetic: the one-pass max |difference| is the two-pass one, NaN included."""

import math

import torch

from harness.merge_check import max_abs_difference, worse


def test_one_pass_max_abs_difference_equals_abs_max():
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 7, 262144), (1, 1, 5), (3, 4)]:
        a, b = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        assert max_abs_difference(a, b) == float((a - b).abs().max())
    a = torch.zeros(4)
    assert max_abs_difference(a, a) == 0.0
    assert max_abs_difference(torch.tensor([0.0, -3.0]), torch.tensor([1.0, 0.0])) == 3.0  # the largest is negative


def test_a_nan_difference_is_nan_not_hidden():
    """A NaN logit in the merged model must not read as agreement (MERGE-IS-TRAINED would pass on max |Δ| = 0)."""
    a, b = torch.tensor([0.0, float("nan"), 1.0]), torch.tensor([0.0, 0.0, 1.0])
    assert math.isnan(max_abs_difference(a, b)) and math.isnan(max_abs_difference(b, a))


def test_the_running_worst_keeps_a_nan():
    """Planted: Python's max(0.0, nan) is 0.0; over prompts the worst difference must stay NaN once one was NaN."""
    assert max(0.0, math.nan) == 0.0  # the trap
    worst = 0.0
    for value in [0.5, math.nan, 0.25]:
        worst = worse(worst, value)
    assert math.isnan(worst)
    assert worse(worse(0.0, 2.0), 1.0) == 2.0


def test_merge_is_trained_fails_on_nan_logits():
    """Planted: NaN merged logits. Before 2026-11-28 check_merge read NaN as "no merge error" (ratio inf): pass."""
    from spec.checklist import check_merge

    faithful = {"prompts": 8, "positions": 2596, "merged_vs_trained_max_abs": 1e-6, "base_vs_trained_max_abs": 1.39,
                "merged_top1_agreement": 1.0}
    assert check_merge(faithful)[0] == "pass"
    for key in ("merged_vs_trained_max_abs", "base_vs_trained_max_abs"):
        verdict, evidence = check_merge({**faithful, key: math.nan})
        assert verdict == "fail" and math.isnan(evidence["trained_moved_over_merge_error"])


def _merge(ratio=2.36, top1=0.859, **more):
    """MERGE-IS-TRAINED's evidence shaped as a GPU run's (the ratio of maxima and top-1 of the tier at 8e11688)."""
    return {"prompts": 8, "positions": 2596, "merged_vs_trained_max_abs": 31.15625,
            "base_vs_trained_max_abs": 31.15625 * ratio, "merged_top1_agreement": top1, **more}


def test_merge_check_reads_the_adapter_from_averages_not_from_the_ratio_of_maxima():
    """The ratio of two maxima read 2.28 to 7.95 over clean GPU runs at the same versions; the rule `ratio >= 2.5` made the
    tier at 8e11688 (2.36, top-1 0.859) a regression (reports/examples/h200-2026-11-29-gpu-tier-s20). Planted: that
    reading is `corrected` now, and the changes a merge can really make are red: a dropped adapter (the recorded drops'
    top-1 0.133/0.156; none of the move carried), a mis-scaled one (half or twice the move), a record of the new method
    without its measurement."""
    from spec.checklist import check_merge

    assert check_merge(_merge())[0] == "corrected"  # method 1: no carried share recorded
    assert check_merge(_merge())[1]["training_move_carried"].startswith("not measured")
    method2 = dict(method=2, base_top1_agreement=0.14, training_move_carried=0.97)
    assert check_merge(_merge(**method2))[0] == "corrected"
    assert check_merge(_merge(ratio=0.99, top1=0.156))[0] == "fail"  # dropped, as method 1 records it
    assert check_merge(_merge(ratio=0.99, top1=0.14, **{**method2, "training_move_carried": 0.01}))[0] == "fail"
    for scale in (0.5, 2.0):  # the adapter merged at the wrong scale: top-1 may stay high, the carried share does not
        assert check_merge(_merge(**{**method2, "training_move_carried": scale}))[0] == "fail"
    for missing in ({"training_move_carried": None}, {"training_move_carried": math.nan}, {"merged_top1_agreement": None}):
        assert check_merge({**_merge(**method2), **missing})[0] == "fail"
    # faithful (at rounding distance) stays `pass`, but not with a share of the move off the band
    assert check_merge(_merge(ratio=100.0, top1=0.99, **method2))[0] == "pass"
    assert check_merge(_merge(ratio=100.0, top1=0.99, **{**method2, "training_move_carried": 0.5}))[0] == "fail"


def test_the_share_of_the_move_a_merge_carries_is_its_scale(tiny_dir, tmp_path):
    """harness.merge_check measures on the tiny model with a LoRA adapter (small B: the logits move about linearly)
    merged at 1, 0.5 and 0 times its weight: the carried share reads each scale, and the verdicts follow."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.merge_check import merged_vs_trained
    from spec.checklist import check_merge

    generator = torch.Generator().manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    trained = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    prompts = [[2, 105, 2364, 107, 9259, 106, 107, 105, 4368, 107], [2, 105, 2364, 107, 4521, 563, 106]]
    verdicts = {}
    for scale in (1.0, 0.5, 0.0):
        merged = copy.deepcopy(trained)
        with torch.no_grad():
            for name, parameter in merged.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(scale)
        folder = tmp_path / f"merged-{scale}"
        merged.merge_and_unload().save_pretrained(str(folder))
        found = merged_vs_trained(trained, folder, prompts)
        assert found["method"] == 2 and abs(found["training_move_carried"] - scale) < 0.1, (scale, found)
        verdicts[scale] = check_merge(found)[0]
    assert verdicts == {1.0: "pass", 0.5: "fail", 0.0: "fail"}
