"""The handbook's causal claims as experiments on the real 270M: arms × seeds, one value changed per arm.

`python -m harness finetune --arm A --seed S` for the 4 arms (harness.recipe.ARMS) × 3 seeds, queued at
session start with the reference fine-tune (tests/gpu/conftest.py); complete runs in
$HARNESS_EXPERIMENTS_DIR are reused, so an interrupted tier resumes where it stopped.
"""

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.uses_runs("experiments"), pytest.mark.gpu_phase(2)]  # after E2E's GGUF checks


@pytest.mark.claim("LORA-MLP-ABLATION", "MASK-STABILITY", "LR-WARMUP-STABILITY")
def test_experiments_over_three_seeds(gpu_runs, certify, run_extras):
    """All 7 targets vs attention-only, masked vs unmasked, warmup 200 vs 0: held-out exact match, loss, grad norms."""
    from harness.experiments import EXPERIMENTS, measurements

    outcomes = gpu_runs.queue.wait(gpu_runs.experiment_runs)
    failed = {name: why[-600:] for name, why in outcomes.items() if not why.startswith("complete")}
    assert not failed, f"experiment runs failed: {failed}"
    facts = measurements(gpu_runs.experiments_root, gpu_runs.seeds)
    run_extras["experiments"] = {"runs": outcomes, "measurements": facts, "runs_at_once": gpu_runs.slots}
    for claim_id in EXPERIMENTS:
        certify(claim_id, facts[claim_id], "gpu", soft=True)
    certify.check()
