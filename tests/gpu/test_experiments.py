"""The handbook's causal claims as experiments on the real 270M: arms × seeds, one value changed per arm.

`python -m harness finetune --arm A --seed S` for the 4 arms × 10 seeds (harness.recipe.ARMS, EXPERIMENT_SEEDS) and
LR-WARMUP-STABILITY's 2 unclipped arms × 5 seeds, queued at session start with the reference fine-tune
(tests/gpu/conftest.py) over every visible GPU; complete runs in $HARNESS_EXPERIMENTS_DIR are reused, so an
interrupted tier resumes where it stopped. Each claim: the paired held-out exact-match effect with its 95%
hierarchical-bootstrap CI, one recorded verdict, sanity floors (spec/experiment_design.py).
"""

import pytest

# A target of its own (--experiments; certify --gpu passes it): over an hour of GPU time, the rest of the tier ~10 min
pytestmark = [pytest.mark.gpu, pytest.mark.experiments, pytest.mark.uses_runs("experiments"),
              pytest.mark.gpu_phase(2)]  # after E2E's GGUF checks


@pytest.mark.claim("LORA-MLP-ABLATION", "MASK-STABILITY", "LR-WARMUP-STABILITY")
def test_experiment_claims(gpu_runs, certify, run_extras):
    """All 7 targets vs attention-only, masked vs unmasked, warmup 200 vs 0 (clipped, and unclipped for explosions):
    paired effects on held-out exact match with CIs, loss, grad norms, NaN steps."""
    from harness.experiment_stats import forest_plot_svg
    from harness.experiments import EXPERIMENTS, measurements, summary

    outcomes = gpu_runs.queue.wait(gpu_runs.experiment_runs)
    failed = {name: why[-600:] for name, why in outcomes.items() if not why.startswith("complete")}
    assert not failed, f"experiment runs failed: {failed}"
    facts = measurements(gpu_runs.experiments_root, gpu_runs.seeds)
    rows = []
    for claim_id in EXPERIMENTS:
        outcome = certify(claim_id, facts[claim_id], "gpu", soft=True)
        ev = outcome.evidence
        if ev.get("effect_points") is not None:  # the forest plot's row (the report: harness.experiment_stats.forest_rows)
            rows.append({"id": claim_id, "label": ev["comparison"], "effect": ev["effect_points"],
                         "ci_low": ev["ci_low_points"], "ci_high": ev["ci_high_points"], "delta": ev["delta_points"],
                         "verdict": outcome.verdict, "expected": outcome.expected})
    run_extras["experiments"] = {"runs": outcomes, "measurements": summary(facts), "runs_at_once": gpu_runs.slots,
                                 "placed": gpu_runs.queue.placed, "forest_svg": forest_plot_svg(rows)}
    certify.check()
