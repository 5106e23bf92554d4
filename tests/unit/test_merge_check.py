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
