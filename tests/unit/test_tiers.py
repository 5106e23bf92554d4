"""certify --gpu merges the CPU tier (CUDA hidden) and the GPU tier claim by claim: nothing lost, no regression hidden."""

from harness.results import certify_exit_code
from harness.tiers import merge


def entry(cid, verdict, evidence=None, regression=False, reason="", env=None, expected="pass"):
    e = {"id": cid, "verdict": verdict, "regression": regression, "evidence": evidence or {}, "reason": reason,
         "tests": [f"t::{cid}"], "violations": ["x"] if regression else [], "expected": expected,
         "expected_by_context": {k: expected for k in (evidence or {})}}
    if env:
        e["environment_problem"] = env
    return e


def run(claims, complete=True):
    return {"schema": 1, "run": "r", "complete": complete, "started": "2026", "claims": claims, "extras": {},
            "environment": {}}


def test_evidence_of_both_tiers_is_kept_and_the_gpu_verdict_shown():
    cpu = run([entry("LORA-RANK", "corrected", {"tiny": {"r": 32}, "gemma3-270m": {"m": 126}}),
               entry("GC-VRAM", "skip", reason="not run in this session (no test for it was selected)")])
    gpu = run([entry("LORA-RANK", "corrected", {"gpu": {"r": 32}, "gemma3-270m": {"m": 126}}),
               entry("GC-VRAM", "corrected", {"gpu": {"saving": 0.176}})])
    merged = {c["id"]: c for c in merge([("cpu tier", cpu), ("gpu tier", gpu)], "all")["claims"]}
    assert set(merged["LORA-RANK"]["evidence"]) == {"tiny", "gemma3-270m", "gpu", "gemma3-270m [gpu tier]"}
    assert merged["GC-VRAM"]["verdict"] == "corrected" and merged["GC-VRAM"]["evidence"] == {"gpu": {"saving": 0.176}}


def test_a_regression_in_either_tier_is_a_regression():
    cpu = run([entry("NF4-LOAD", "fail", {"tiny": {}}, regression=True)])
    gpu = run([entry("NF4-LOAD", "pass", {"gpu": {}})])
    data = merge([("cpu tier", cpu), ("gpu tier", gpu)], "all")
    claim = data["claims"][0]
    assert (claim["verdict"], claim["regression"], claim["violations"]) == ("fail", True, ["[cpu tier] x"])
    assert certify_exit_code(0, data) == 1


def test_environment_problems_and_skip_reasons_survive():
    cpu = run([entry("GGUF-LLAMACPP", "skip", reason="environment problem: llama.cpp: crashed",
                     env="environment problem: llama.cpp: crashed")])
    gpu = run([entry("GGUF-LLAMACPP", "skip", reason="not run in this session (no test for it was selected)")])
    data = merge([("cpu tier", cpu), ("gpu tier", gpu)], "all")
    assert data["claims"][0]["reason"].startswith("environment problem")
    assert data["environment_problems"] == [{"reason": "environment problem: llama.cpp: crashed",
                                             "claims": ["GGUF-LLAMACPP"]}]
    assert certify_exit_code(0, data) == 2


def test_an_instruments_check_that_could_not_run_keeps_the_merged_run_from_certified():
    """A check bound to no claim (the embedded model's greedy answer) skipped for an environment problem in one tier:
    the merged run names it and its tests, the report's banner says so, certify exits 2. Planted: the merge once kept
    only the claims' problems, and the run read "certified"."""
    from harness.report import status

    reason = "environment problem: the embedded model: no package"
    cpu = run([entry("GGUF-LLAMACPP", "pass", {"tiny": {}})])
    cpu["environment_problems"] = [{"reason": reason, "claims": [], "tests": ["tests/slow/t.py::test_greedy"]}]
    data = merge([("cpu tier", cpu), ("gpu tier", run([]))], "all")
    assert data["environment_problems"] == [{"reason": reason, "claims": [], "tests": ["tests/slow/t.py::test_greedy"]}]
    assert certify_exit_code(0, data) == 2
    kind, headline = status(data)
    assert kind == "environment" and "1 check(s) of the suite's instruments could not run here" in headline


def test_an_incomplete_tier_makes_the_merged_run_incomplete():
    data = merge([("cpu tier", run([], complete=False)), ("gpu tier", run([]))], "all")
    assert data["complete"] is False and certify_exit_code(0, data) == 3


def test_a_claim_the_gpu_tier_left_out_says_why_not_that_the_cpu_tier_had_no_gpu():
    """certify --gpu --no-experiments: the CPU tier (CUDA hidden) skipped the experiment test for want of a GPU; the
    GPU tier deselected it and says why. The merged claim gives the GPU tier's reason (it said "needs a CUDA GPU" on
    a GPU runner before)."""
    why = "not run in this session: the experiment claims are a GPU target of their own"
    cpu = run([entry("MASK-STABILITY", "skip", reason="needs a CUDA GPU")])
    gpu = run([entry("MASK-STABILITY", "skip", reason=why)])
    merged = merge([("cpu tier", cpu), ("gpu tier", gpu)], "all")["claims"][0]
    assert (merged["verdict"], merged["reason"]) == ("skip", why)


def test_the_merge_says_evidence_moved_if_it_moved_in_either_tier():
    """red_by_test_failure is recomputed, not copied from the last tier: evidence that moved in the CPU tier stays
    "moved" when the GPU tier's test errored (and the other way round)."""
    moved = entry("LORA-RANK", "fail", {"tiny": {"r": 16}}, regression=True)
    errored = {**entry("LORA-RANK", "fail", regression=True, reason="t: NameError"), "red_by_test_failure": True}
    for parts in ([("cpu tier", run([moved])), ("gpu tier", run([errored]))],
                  [("cpu tier", run([errored])), ("gpu tier", run([moved]))]):
        assert "red_by_test_failure" not in merge(parts, "all")["claims"][0]
    both = merge([("cpu tier", run([errored])), ("gpu tier", run([dict(errored)]))], "all")["claims"][0]
    assert both["red_by_test_failure"] and both["regression"]


def test_the_merged_scope_names_only_experiment_claims_no_tier_checked():
    why = "the experiment claims are a GPU target of their own"
    cpu = run([entry("MASK-STABILITY", "skip", reason="needs a CUDA GPU"),
               entry("LORA-MLP-ABLATION", "corrected", {"tiny": {}})])
    gpu = {**run([entry("MASK-STABILITY", "skip", reason="not run in this session: " + why),
                  entry("LORA-MLP-ABLATION", "skip", reason="not run in this session: " + why)]),
           "extras": {"experiments_not_run": {"claims": ["LORA-MLP-ABLATION", "MASK-STABILITY"], "why": why}}}
    data = merge([("cpu tier", cpu), ("gpu tier", gpu)], "all")
    assert data["extras"]["experiments_not_run"]["claims"] == ["MASK-STABILITY"]


def test_the_tiers_timelines_share_one_axis():
    """certify --gpu's merge: each tier's timeline shifted by its start after the first tier's, tests named with their
    tier. Planted: a second tier 100 s later."""
    from harness.tiers import merged_timeline

    cpu = {"started": "2026-11-29T10:00:00+00:00", "timeline": {"written_s": 90.0, "tests": {"t.py::a": [1.0, 5.0]},
                                                                  "runs": []}}
    gpu = {"started": "2026-11-29T10:01:40+00:00", "timeline": {
        "written_s": 700.0, "tests": {"t.py::a": [2.0, 4.0]},
        "runs": [{"queue": "fine-tunes", "name": "e2e", "start_s": 1.0, "end_s": None, "outcome": None}]}}
    merged = merged_timeline([("cpu", cpu), ("gpu", gpu)])
    assert merged["tests"] == {"t.py::a [cpu]": [1.0, 5.0], "t.py::a [gpu]": [102.0, 104.0]}
    assert merged["runs"] == [{"queue": "gpu: fine-tunes", "name": "e2e", "start_s": 101.0, "end_s": None, "outcome": None}]
    assert merged["written_s"] == 800.0


def test_a_tier_without_a_timeline_or_a_readable_start_is_not_drawn_over_another():
    """merge() carries the merged timeline; a tier without one adds nothing (older results.json), one whose start
    cannot be read is named in not_aligned instead of drawn at the first tier's start."""
    from harness.tiers import merged_timeline

    timed = {"timeline": {"t0": 1000.0, "written_s": 50.0, "tests": {"t.py::a": [1.0, 5.0]}, "runs": []}}
    lost = {"started": "not a time", "timeline": {"written_s": 9.0, "tests": {"t.py::b": [1.0, 2.0]}, "runs": []}}
    merged = merged_timeline([("old", {"started": "2026-11-29T10:00:00+00:00"}), ("cpu", timed), ("gpu", lost)])
    assert merged["tests"] == {"t.py::a [cpu]": [1.0, 5.0]} and merged["written_s"] == 50.0
    assert merged["not_aligned"] == ["gpu"]
    assert "timeline" in merge([("cpu tier", run([])), ("gpu tier", run([]))], "all")
