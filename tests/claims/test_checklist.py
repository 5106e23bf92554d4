"""Handbook §5 on the CPU: the overfitting rule as a detector, validated on synthetic loss curves."""

import math
import random

import pytest
from hypothesis import given, strategies as st

from harness.overfit import loss_plateau


def synthetic_curve(level: float, tau: float, noise: float, steps: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [max(1e-6, level + (2.5 - level) * math.exp(-t / tau)) * (1 + noise * rng.uniform(-1, 1)) for t in range(steps)]


@pytest.mark.claim("CHECK-OVERFIT")
def test_plateau_detector_flags_flat_low_curves_only(certify):
    """Curves that settle at ~0.001 are flagged; curves still falling or settling higher are not."""
    seen = {"cases": 0, "errors": 0, "first_error": None}

    def judge(level, tau, noise, seed, expect):
        seen["cases"] += 1
        got = loss_plateau(synthetic_curve(level, tau, noise, 300, seed))["plateau"]
        if got != expect:
            seen["errors"] += 1
            seen["first_error"] = seen["first_error"] or {"level": level, "tau": tau, "expect": expect}

    # Settled: by step 250 of 300 the decaying term (2.5·e^(−250/20) ≈ 1e-5) is far below the level.
    @given(st.floats(0.0003, 0.003), st.floats(5, 20), st.floats(0, 0.1), st.integers(0, 10**6))
    def flat_at_a_thousandth(level, tau, noise, seed):
        judge(level, tau, noise, seed, True)

    @given(st.floats(0.05, 1.5), st.floats(5, 40), st.floats(0, 0.1), st.integers(0, 10**6))
    def settles_higher(level, tau, noise, seed):
        judge(level, tau, noise, seed, False)

    @given(st.floats(0.0003, 0.003), st.floats(150, 600), st.floats(0, 0.05), st.integers(0, 10**6))
    def still_falling(level, tau, noise, seed):
        judge(level, tau, noise, seed, False)

    flat_at_a_thousandth()
    settles_higher()
    still_falling()
    # The run's side of the claim (train loss next to validation loss) is certified from the reference run's
    # record in the GPU tier (tests/gpu/test_unsloth_tier.py).
    certify("CHECK-OVERFIT", {"detector_cases": seen["cases"], "detector_errors": seen["errors"],
                              "first_error": seen["first_error"]}, "synthetic")
