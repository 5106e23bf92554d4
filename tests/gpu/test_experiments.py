"""The handbook's causal claims as experiments on the real 270M: arms × seeds, one value changed per arm.

Runs `python -m harness finetune --arm A --seed S` for the 4 arms (harness.recipe.ARMS) × 3 seeds,
several at once on the GPU; complete runs in $HARNESS_EXPERIMENTS_DIR are reused, so an interrupted
tier resumes where it stopped.
"""

import os

import pytest

pytestmark = pytest.mark.gpu

SEEDS = [int(s) for s in os.environ.get("HARNESS_EXPERIMENT_SEEDS", "3407,3408,3409").split(",")]


def _parallel() -> int:
    """12 runs at once on a 141 GiB H200, 9 on an 80 GiB H100: ~8 GiB per run (training + generation)."""
    import torch

    if os.environ.get("HARNESS_EXPERIMENT_PARALLEL"):
        return int(os.environ["HARNESS_EXPERIMENT_PARALLEL"])
    return max(1, min(12, int(torch.cuda.get_device_properties(0).total_memory / 2**30 // 8)))


@pytest.mark.claim("LORA-MLP-ABLATION", "MASK-STABILITY", "LR-WARMUP-STABILITY")
def test_experiments_over_three_seeds(gemma_dir, tmp_path_factory, certify, run_extras):
    """All 7 targets vs attention-only, masked vs unmasked, warmup 200 vs 0: held-out exact match, loss, grad norms."""
    from harness.experiments import EXPERIMENTS, all_arms, measurements, run_arms

    root = os.environ.get("HARNESS_EXPERIMENTS_DIR") or tmp_path_factory.mktemp("experiments")
    outcomes = run_arms(root, all_arms(), SEEDS, model=str(gemma_dir), backend="unsloth", parallel=_parallel())
    failed = {name: why for name, why in outcomes.items() if not why.startswith("complete")}
    assert not failed, f"experiment runs failed: {failed}"
    facts = measurements(root, SEEDS)
    run_extras["experiments"] = {"runs": outcomes, "measurements": facts, "parallel": _parallel()}
    for claim_id in EXPERIMENTS:
        certify(claim_id, facts[claim_id], "gpu", soft=True)
    certify.check()
