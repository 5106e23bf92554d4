"""The experiments' judging: spike counting, measurements read from run records, and noise-aware verdicts."""

import json

import pytest

import spec
from harness.experiments import loss_spikes, measurements, run_dir
from spec.core import evaluate

SEEDS = [1, 2, 3]


def test_loss_spikes_counts_steps_above_twice_the_recent_median():
    """A step counts when its loss exceeds 2× the median of the 10 before it; a smooth fall has none."""
    smooth = [1.0 / (t + 1) for t in range(50)]
    assert loss_spikes(smooth) == 0
    spiky = list(smooth)
    spiky[20], spiky[40] = 5.0, 1.0
    assert loss_spikes(spiky) == 2


def _write_run(root, arm, seed, exact, val, grad, losses):
    folder = run_dir(root, arm, seed)
    folder.mkdir(parents=True)
    steps = [{"step": i + 1, "loss": loss, "grad_norm": grad if i == 5 else 1.0} for i, loss in enumerate(losses)]
    (folder / "run.json").write_text(json.dumps({"complete": True, "arm": arm, "eval": {"exact_match": exact},
                                                 "val_loss": val, "steps": steps}))


def test_measurements_read_each_arm_and_seed_from_the_run_records(tmp_path):
    """Exact match, val loss, max grad norm and spikes come from run.json per (arm, seed), in seed order."""
    flat = [0.5] * 30
    for i, seed in enumerate(SEEDS):
        _write_run(tmp_path, "handbook", seed, 0.5 + i / 100, 0.1, 3.0, flat)
        _write_run(tmp_path, "attention_only", seed, 0.4, 0.2, 3.0, flat)
        _write_run(tmp_path, "unmasked", seed, 0.6, 0.3, 3.0, flat)
        _write_run(tmp_path, "no_warmup", seed, 0.3, 0.4, 9.0, flat[:20] + [2.0] + flat[:9])
    m = measurements(tmp_path, SEEDS)
    assert m["LORA-MLP-ABLATION"]["exact"] == {"all": [0.5, 0.51, 0.52], "attention": [0.4, 0.4, 0.4]}
    assert m["LR-WARMUP-STABILITY"]["max_grad_norm"] == {"warmup": [3.0] * 3, "none": [9.0] * 3}
    assert m["LR-WARMUP-STABILITY"]["loss_spikes"] == {"warmup": [0] * 3, "none": [1] * 3}
    assert m["MASK-STABILITY"]["loss_spread"] == {"masked": 0.0, "unmasked": 0.0}


def test_measurements_name_the_missing_run(tmp_path):
    """An arm that never completed is an error naming its folder, not a silent gap."""
    with pytest.raises(FileNotFoundError, match="handbook-seed1"):
        measurements(tmp_path, SEEDS)


@pytest.mark.parametrize("masked, unmasked, verdict", [
    ([0.8, 0.82, 0.81], [0.5, 0.52, 0.51], "pass"),
    ([0.5, 0.6, 0.55], [0.55, 0.5, 0.6], "unsupported"),
    ([0.5, 0.52, 0.51], [0.8, 0.82, 0.81], "refuted"),
])
def test_mask_stability_verdict_depends_on_gap_against_seed_noise(masked, unmasked, verdict):
    """A gap beyond twice the seed spread decides the direction; inside it, the claim is unsupported."""
    m = {"exact": {"masked": masked, "unmasked": unmasked}, "loss_spread": {"masked": 0.0, "unmasked": 0.0},
         "seeds": SEEDS}
    assert verdict == evaluate(spec.CLAIMS["MASK-STABILITY"], m, "gpu").verdict


@pytest.mark.parametrize("grad_none, spikes_none, exact_none, verdict", [
    ([90.0, 95.0, 99.0], [5, 5, 5], [0.5, 0.5, 0.5], "pass"),        # grad norms explode without warmup
    ([10.0, 11.0, 10.5], [30, 31, 32], [0.5, 0.5, 0.5], "corrected"),  # no explosion, more spikes
    ([10.0, 11.0, 10.5], [5, 6, 5], [0.5, 0.51, 0.5], "unsupported"),
])
def test_warmup_stability_separates_explosion_from_other_benefits(grad_none, spikes_none, exact_none, verdict):
    """Only grad-norm explosion supports the handbook's reason; fewer spikes or better accuracy alone correct it."""
    m = {"max_grad_norm": {"warmup": [10.0, 10.5, 11.0], "none": grad_none},
         "loss_spikes": {"warmup": [5, 5, 6], "none": spikes_none},
         "exact": {"warmup": [0.5, 0.5, 0.51], "none": exact_none}, "seeds": SEEDS}
    assert verdict == evaluate(spec.CLAIMS["LR-WARMUP-STABILITY"], m, "gpu").verdict


@pytest.mark.parametrize("masked, unmasked, regression", [
    ([0.5, 0.52, 0.51], [0.8, 0.82, 0.81], False),  # refuted: seen
    ([0.5, 0.6, 0.55], [0.55, 0.5, 0.6], False),    # unsupported: seen (seed noise straddles the threshold)
    ([0.8, 0.82, 0.81], [0.5, 0.52, 0.51], True),   # pass: masking clearly better, never seen: red
])
def test_an_expectation_band_accepts_the_verdicts_seen_and_nothing_else(masked, unmasked, regression):
    """MASK-STABILITY's GPU expectation "refuted|unsupported": either is green, the opposite direction is red."""
    m = {"exact": {"masked": masked, "unmasked": unmasked}, "loss_spread": {"masked": 0.0, "unmasked": 0.0},
         "seeds": SEEDS}
    outcome = evaluate(spec.CLAIMS["MASK-STABILITY"], m, "gpu")
    assert regression == outcome.regression
    assert outcome.expected == "refuted|unsupported"


def test_an_unknown_verdict_in_a_band_is_refused():
    """A typo in a recorded band is caught when the claim is defined, not when a run happens to reach it."""
    from spec.core import Claim

    with pytest.raises(AssertionError, match="refutd"):
        Claim("X", "s", "gpu", "q", "s", "pass", lambda m: ("pass", {}), (), {}, {"gpu": "unsupported|refutd"})


def test_an_unknown_measurement_context_is_an_error_not_a_dropped_bound():
    """A misspelled context would skip its context bounds: evaluate() and Claim() refuse it, naming the known ones."""
    import dataclasses

    import spec
    from spec.core import UnknownContext, evaluate

    claim = spec.CLAIMS["GGUF-Q8-EXPORT"]
    with pytest.raises(UnknownContext, match="gemma3-270m"):
        evaluate(claim, {}, "gemma3_270m")
    with pytest.raises(UnknownContext):
        dataclasses.replace(claim, context_bounds={"gemma-270m": ()})
