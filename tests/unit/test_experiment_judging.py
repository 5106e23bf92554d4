"""The experiment claims' judging: run records → measurements → one recorded verdict each, and every way they go red.

Each claim can fail: a planted opposite effect is `pass`/`refuted` against its recorded verdict, an underpowered
design is `fail` with "more seeds or items", a collapsed pipeline (every arm ~0) or a handbook arm that does not learn
breaks a sanity floor, and an explosion without warmup (unclipped) moves LR-WARMUP-STABILITY to `pass`.
"""

import json

import numpy as np
import pytest

import spec
from harness.experiments import (EXPERIMENTS, UNCLIPPED, UNCLIPPED_SEEDS, all_arms, loss_spikes, measurements,
                                 run_dir, seeds_for, summary)
from spec import experiment_design as X
from spec.core import evaluate

SEEDS = list(range(1, 11))
N_ITEMS, N_CLUSTERS = 2000, 200  # the design: dataset v2's test split, ~10 items per held-out combination


def test_loss_spikes_counts_steps_above_twice_the_recent_median():
    """A step counts when its loss exceeds 2× the median of the 10 before it; a smooth fall has none; NaN is no spike."""
    smooth = [1.0 / (t + 1) for t in range(50)]
    assert loss_spikes(smooth) == 0
    spiky = list(smooth)
    spiky[20], spiky[40] = 5.0, 1.0
    assert loss_spikes(spiky) == 2
    assert loss_spikes(smooth[:30] + [float("nan")] + smooth[30:]) == 0


def _items(rng, p: float, sd: float = 0.0, n_items: int = N_ITEMS, n_clusters: int = N_CLUSTERS) -> list:
    q = float(np.clip(p + rng.normal(0, sd), 0, 1))
    right = rng.random(n_items) < q
    return [{"id": f"test-{i:05d}", "function": f"fn{i % n_clusters}", "exact": bool(right[i])} for i in range(n_items)]


def _write_run(root, arm, seed, outcomes, *, json_valid=0.99, grad=3.0, losses=None, combos=None):
    folder = run_dir(root, arm, seed)
    folder.mkdir(parents=True)
    losses = losses or [2.5] * 10 + [0.5] * 30 + [0.001] * 10
    steps = [{"step": i + 1, "loss": loss, "grad_norm": grad if i == 5 else 1.0} for i, loss in enumerate(losses)]
    exact = sum(o["exact"] for o in outcomes) / len(outcomes)
    (folder / "run.json").write_text(json.dumps({
        "complete": True, "arm": arm, "val_loss": 0.001, "steps": steps,
        "eval": {"exact_match": exact, "json_valid_rate": json_valid, "outcomes": outcomes}}))
    if combos:  # evaluation v2: the combination of each item in the stored outputs
        (folder / "outputs-test.jsonl").write_text("".join(json.dumps({"id": o["id"], "template": combos(o)}) + "\n"
                                                           for o in outcomes))


def test_measurements_read_each_arm_and_seed_from_the_run_records(tmp_path):
    """Per arm and seed, in seed order: item outcomes (cluster: the combination where outputs-test.jsonl names it,
    else the function), exact match, JSON validity, loss fall, grad norm, spikes, NaN steps; the unclipped arms run the
    first UNCLIPPED_SEEDS seeds only."""
    rng = np.random.default_rng(0)
    for arm in all_arms():
        for i, seed in enumerate(seeds_for(arm, SEEDS)):
            losses = [2.5] * 10 + [0.5] * 10 + ([float("nan")] if arm == "no_warmup_noclip" else [0.5]) + [0.001] * 10
            _write_run(tmp_path, arm, seed, _items(rng, 0.5, n_items=400, n_clusters=40), grad=9.0 if arm.startswith("no_warmup") else 3.0,
                       losses=losses, combos=(lambda o: f"{o['function']}|x") if arm == "handbook" and i == 0 else None)
    m = measurements(tmp_path, SEEDS)
    assert set(m) == set(EXPERIMENTS)
    lora = m["LORA-MLP-ABLATION"]
    assert (lora["treatment"], lora["control"], lora["seeds"]) == ("handbook", "attention_only", SEEDS)
    assert len(lora["outcomes"]["handbook"][1]) == 400 and lora["outcomes"]["handbook"][1][0][1] == "fn0|x"
    assert lora["outcomes"]["handbook"][2][0][1] == "fn0"  # no outputs file: the function
    assert lora["runs"]["handbook"]["loss_fall"] == [2500.0] * 10
    warm = m["LR-WARMUP-STABILITY"]
    assert warm["runs"]["no_warmup"]["max_grad_norm"] == [9.0] * 10
    unclipped = warm["unclipped"]
    assert (unclipped["treatment"], unclipped["control"]) == UNCLIPPED
    assert unclipped["seeds"] == SEEDS[:UNCLIPPED_SEEDS]
    assert unclipped["runs"]["no_warmup_noclip"]["nonfinite_steps"] == [1] * UNCLIPPED_SEEDS
    assert json.loads(json.dumps(summary(m)))["MASK-STABILITY"].get("outcomes") is None


def test_measurements_name_the_missing_run(tmp_path):
    """An arm that never completed is an error naming its folder, not a silent gap."""
    with pytest.raises(FileNotFoundError, match="handbook-seed1"):
        measurements(tmp_path, SEEDS)


# --- the claims on synthetic measurements of known effect ---------------------------------------------------------

def _arm_facts(outcomes, *, json_valid=0.99, loss_fall=2500.0, grad=20.0, nonfinite=0):
    n = len(outcomes)
    return {"exact": [sum(x for _, _, x in items) / len(items) for items in outcomes.values()],
            "json_valid": [json_valid] * n, "val_loss": [0.001] * n, "loss_fall": [loss_fall] * n,
            "max_grad_norm": [grad] * n, "loss_spikes": [3] * n, "nonfinite_steps": [nonfinite] * n}


def _pair(rng, treatment, control, p_t, p_c, seeds=SEEDS, sd=0.02, **facts):
    outcomes = {treatment: {}, control: {}}
    for arm, p in ((treatment, p_t), (control, p_c)):
        for s in seeds:
            outcomes[arm][s] = [(o["id"], o["function"], o["exact"]) for o in _items(rng, p, sd)]
    return {"treatment": treatment, "control": control, "seeds": list(seeds), "cluster_key": "function",
            "outcomes": outcomes, "runs": {arm: _arm_facts(outcomes[arm], **facts.get(arm, {})) for arm in outcomes}}


def synthetic(claim_id, p_handbook, p_other, *, seeds=SEEDS, sd=0.02, facts=None, unclipped=None, rng_seed=0):
    """Measurements of one claim: handbook arm right with probability p_handbook, its control p_other, per item."""
    rng = np.random.default_rng(rng_seed)
    m = _pair(rng, *EXPERIMENTS[claim_id], p_handbook, p_other, seeds, sd, **(facts or {}))
    if claim_id == "LR-WARMUP-STABILITY":
        u = unclipped or {}
        m["unclipped"] = _pair(rng, *UNCLIPPED, p_handbook, p_other, seeds[:UNCLIPPED_SEEDS], sd,
                               **{arm: u.get(arm, {}) for arm in UNCLIPPED})
        m["warmup_steps"] = 200
    return m


# the pooled effects: unmasked − masked +12.7, attention-only − all 7 +6.4 (here 10), no warmup − warmup −9.1
AS_RECORDED = {"LORA-MLP-ABLATION": (0.50, 0.60), "MASK-STABILITY": (0.55, 0.68), "LR-WARMUP-STABILITY": (0.55, 0.46)}


def _outcome(claim_id, *args, **kwargs):
    return evaluate(spec.CLAIMS[claim_id], synthetic(claim_id, *args, **kwargs), "gpu")


@pytest.mark.parametrize("claim_id", list(EXPERIMENTS))
def test_the_recorded_verdict_holds_at_the_measured_effects(claim_id):
    """At the pooled effects the issue measured, each claim reaches its one recorded verdict, green, with effect, CI,
    seeds and items in its evidence."""
    o = _outcome(claim_id, *AS_RECORDED[claim_id])
    assert not o.regression, o.explain()
    assert o.expected == {"LORA-MLP-ABLATION": "refuted", "MASK-STABILITY": "refuted",
                          "LR-WARMUP-STABILITY": "corrected"}[claim_id]
    ev = o.evidence
    assert ev["ci_low_points"] <= ev["effect_points"] <= ev["ci_high_points"]
    assert (ev["n_seeds"], ev["items"], ev["clusters"], ev["delta_points"]) == (10, N_ITEMS, N_CLUSTERS, 3.0)
    assert "|" not in o.expected


@pytest.mark.parametrize("claim_id", ["LORA-MLP-ABLATION", "MASK-STABILITY"])
def test_the_handbooks_direction_is_red_against_a_recorded_refutation(claim_id):
    """Planted: the handbook's arm clearly better (the MLP helps; masking helps) → `pass` ≠ `refuted` → red."""
    o = _outcome(claim_id, 0.65, 0.50)
    assert o.verdict == "pass" and o.regression


def test_warmup_hurting_accuracy_is_red():
    """Planted: warmup clearly worse → `refuted` ≠ `corrected` → red."""
    o = _outcome("LR-WARMUP-STABILITY", 0.45, 0.58)
    assert o.verdict == "refuted" and o.regression


def test_an_explosion_without_warmup_moves_the_warmup_claim_to_pass():
    """Planted: unclipped runs without warmup go NaN (or their grad norm 50× the clipped arm's), none with warmup →
    the handbook's reason holds → `pass` ≠ `corrected` → red; one exploding run of five is not enough."""
    o = _outcome("LR-WARMUP-STABILITY", *AS_RECORDED["LR-WARMUP-STABILITY"],
                 unclipped={"no_warmup_noclip": {"nonfinite": 40}})
    assert o.verdict == "pass" and o.regression and o.evidence["exploded_no_warmup_noclip"] == UNCLIPPED_SEEDS
    o = _outcome("LR-WARMUP-STABILITY", *AS_RECORDED["LR-WARMUP-STABILITY"],
                 unclipped={"no_warmup_noclip": {"grad": 1000.0}})
    assert o.verdict == "pass" and o.evidence["explosion_threshold"] == 200.0
    m = synthetic("LR-WARMUP-STABILITY", *AS_RECORDED["LR-WARMUP-STABILITY"])
    m["unclipped"]["runs"]["no_warmup_noclip"]["nonfinite_steps"] = [3, 0, 0, 0, 0]
    o = evaluate(spec.CLAIMS["LR-WARMUP-STABILITY"], m, "gpu")
    assert o.verdict == "corrected" and not o.regression and o.evidence["exploded_no_warmup_noclip"] == 1


def test_unclipped_runs_without_grad_norms_cannot_judge_an_explosion():
    """A trainer that stops logging the gradient norm without clipping (None in the record) is red, not 'no explosion'."""
    o = _outcome("LR-WARMUP-STABILITY", *AS_RECORDED["LR-WARMUP-STABILITY"], unclipped={"handbook_noclip": {"grad": None}})
    assert o.regression and any("unclipped_grad_norm_logged" in v for v in o.violations)


@pytest.mark.parametrize("claim_id", list(EXPERIMENTS))
def test_an_underpowered_design_is_red_and_says_more_seeds_or_items(claim_id):
    """A small effect under wide seed noise: neither direction nor equivalence → `fail`, with the remedy in the
    evidence (never green, never a wider expectation)."""
    o = _outcome(claim_id, 0.52, 0.50, seeds=SEEDS[:5], sd=0.08)
    assert o.verdict == "fail" and o.regression
    assert o.evidence["statistical_verdict"] == "underpowered"
    assert "more seeds or items" in o.evidence["underpowered"] and "more seeds or items" in o.explain()


@pytest.mark.parametrize("claim_id", list(EXPERIMENTS))
def test_a_collapsed_pipeline_is_red_by_the_sanity_floors(claim_id):
    """Planted: every arm at 0% exact match and invalid JSON (the effect is 0 ± 0: `unsupported`) → floors red."""
    collapsed = {arm: {"json_valid": 0.0} for arm in EXPERIMENTS[claim_id]}
    o = _outcome(claim_id, 0.0, 0.0, facts=collapsed)
    assert o.regression
    broken = " ".join(o.violations)
    assert "handbook_exact_mean" in broken and "json_valid_min" in broken


@pytest.mark.parametrize("claim_id", list(EXPERIMENTS))
def test_a_handbook_arm_that_does_not_learn_is_red(claim_id):
    """Planted: the handbook arm's train loss flat (first 10 steps ≈ last 10) → the loss-fall floor is red."""
    o = _outcome(claim_id, *AS_RECORDED[claim_id], facts={"handbook": {"loss_fall": 1.1}})
    assert o.regression and any("handbook_loss_fall_min" in v for v in o.violations)


def test_one_arm_with_broken_json_is_red():
    """Planted: the control arm's JSON validity 0.5 (each compared arm has the floor)."""
    o = _outcome("MASK-STABILITY", *AS_RECORDED["MASK-STABILITY"], facts={"unmasked": {"json_valid": 0.5}})
    assert o.regression and any("json_valid_min" in v for v in o.violations)


def test_fewer_items_or_clusters_than_the_design_is_red():
    """320 items (the recipe's eval_limit) or the function as cluster (dataset v1: 13): not the recorded design → red."""
    m = synthetic("MASK-STABILITY", 0.40, 0.70)
    for arm in m["outcomes"]:
        for seed, items in m["outcomes"][arm].items():
            m["outcomes"][arm][seed] = [(i, c, x) for i, c, x in items[:320]]
    o = evaluate(spec.CLAIMS["MASK-STABILITY"], m, "gpu")
    assert o.verdict == "refuted" and o.regression and any(v.startswith("items >=") for v in o.violations)
    m = synthetic("MASK-STABILITY", 0.40, 0.70)
    for arm in m["outcomes"]:
        for seed, items in m["outcomes"][arm].items():
            m["outcomes"][arm][seed] = [(i, f"fn{int(c[2:]) % 13}", x) for i, c, x in items]
    o = evaluate(spec.CLAIMS["MASK-STABILITY"], m, "gpu")
    assert o.regression and any(v.startswith("clusters >=") for v in o.violations)


def test_fewer_seeds_than_the_design_minimum_is_red():
    """3 seeds (the old design): below the recorded minimum of 5 → red whatever the effect."""
    o = _outcome("MASK-STABILITY", 0.40, 0.70, seeds=SEEDS[:3])
    assert o.verdict == "refuted" and o.regression and any("n_seeds" in v for v in o.violations)


def test_the_design_is_fixed_in_the_spec():
    """δ, the minimum seeds and the floors are the spec's, before any run; the recorded seeds meet the minimum."""
    from harness.recipe import EXPERIMENT_SEEDS, HANDBOOK

    assert (X.DELTA_POINTS, X.MIN_SEEDS, X.HANDBOOK_EXACT_FLOOR, X.JSON_VALID_FLOOR) == (3.0, 5, 0.40, 0.8)
    assert EXPERIMENT_SEEDS[0] == HANDBOOK.seed and len(set(EXPERIMENT_SEEDS)) >= X.MIN_SEEDS
    for claim_id in EXPERIMENTS:
        assert any(s.startswith("derived: provisional") for s in spec.CLAIMS[claim_id].sources)


def test_the_unclipped_arms_reach_the_trainer_and_the_handbook_arm_is_unchanged(tmp_path):
    """Recipe.max_grad_norm None → the trainer's max_grad_norm 0.0 (transformers clips only above 0 and still logs the
    unclipped norm) and NaN losses logged as they are; the handbook arm passes neither, so RECIPE-FIDELITY still lists
    max_grad_norm 1.0 among the values set silently."""
    from harness.backends.sft import sft_config, sft_kwargs
    from harness.recipe import ARMS, HANDBOOK

    assert "max_grad_norm" not in sft_kwargs(HANDBOOK, tmp_path, on_gpu=False)
    for arm in UNCLIPPED:
        recipe = HANDBOOK.with_(**ARMS[arm])
        assert recipe.max_grad_norm is None and recipe.warmup_steps == (0 if arm.startswith("no_warmup") else 200)
        config = sft_config(recipe, tmp_path, on_gpu=False)
        assert (config.max_grad_norm, config.logging_nan_inf_filter) == (0.0, False)
    assert sft_config(HANDBOOK, tmp_path, on_gpu=False).max_grad_norm == 1.0


def test_a_verdict_band_is_refused():
    """One recorded verdict per claim: "a|b" (or a typo) is refused when the claim is defined."""
    from spec.core import Claim

    with pytest.raises(AssertionError, match="unsupported\\|refuted"):
        Claim("X", "s", "gpu", "q", "s", "unsupported|refuted", lambda m: ("pass", {}))
    with pytest.raises(AssertionError, match="refutd"):
        Claim("X", "s", "gpu", "q", "s", "pass", lambda m: ("pass", {}), (), {}, {"gpu": "refutd"})


def test_an_unknown_measurement_context_is_an_error_not_a_dropped_bound():
    """A misspelled context would skip its context bounds: evaluate() and Claim() refuse it, naming the known ones."""
    import dataclasses

    from spec.core import UnknownContext

    claim = spec.CLAIMS["GGUF-Q8-EXPORT"]
    with pytest.raises(UnknownContext, match="gemma3-270m"):
        evaluate(claim, {}, "gemma3_270m")
    with pytest.raises(UnknownContext):
        dataclasses.replace(claim, context_bounds={"gemma-270m": ()})
