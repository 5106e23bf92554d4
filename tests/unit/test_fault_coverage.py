"""Every claim that can run on the CPU has a planted regression in the fault catalog (tests/faults), or a stated
reason why no library change reaches it and a unit test that plants the change instead."""

from pathlib import Path

import spec

FAULTS_DIR = Path(__file__).resolve().parents[1] / "faults"
# Claims whose CPU evidence no library change can move: the planted change lives in a unit test, named here.
PLANTED_IN_UNIT_TESTS = {
    "CHECK-OVERFIT": "its CPU evidence is this project's plateau detector on synthetic curves (no library in the "
                     "path): tests/unit/test_fault_coverage.py::test_a_changed_detector_threshold_turns_check_overfit_red; "
                     "its run evidence is certified in the GPU tier and replayed in tests/unit/test_gpu_records_replayed.py",
}


def _catalog():
    from harness.pytest_plugin import load_fault_catalog

    return load_fault_catalog(FAULTS_DIR.parents[1])


def test_every_cpu_claim_has_a_planted_fault():
    catalog = _catalog()
    cpu_claims = {c.id for c in spec.CLAIMS.values() if c.tier != "gpu"}
    covered = {f.expected_claim for f in catalog.FAULTS}
    assert sorted(cpu_claims - covered - set(PLANTED_IN_UNIT_TESTS)) == []
    assert set(PLANTED_IN_UNIT_TESTS) <= cpu_claims - covered


def test_every_fault_names_a_known_claim_and_existing_tests():
    root = FAULTS_DIR.parents[1]
    for fault in _catalog().FAULTS + _catalog().GPU_FAULTS:
        assert fault.expected_claim in spec.CLAIMS, fault.id
        assert all((root / t.split("::")[0]).is_file() for t in fault.tests), fault.id


def test_a_changed_detector_threshold_turns_check_overfit_red(monkeypatch):
    """Real change: the plateau level moved from 0.005 to 0.05 — curves settling at 0.01-0.05 would be called flat at
    0.001; the synthetic cases with those levels turn the claim red."""
    import math
    import random

    from harness import overfit
    from spec.core import evaluate

    def curve(level, seed):
        rng = random.Random(seed)
        return [max(1e-6, level + (2.5 - level) * math.exp(-t / 10)) * (1 + 0.05 * rng.uniform(-1, 1)) for t in range(300)]

    cases = [(level, flat, seed) for level, flat in ((0.001, True), (0.002, True), (0.03, False), (0.05, False), (0.5, False))
             for seed in range(5)]

    def judged():
        errors = sum(overfit.loss_plateau(curve(level, seed))["plateau"] != flat for level, flat, seed in cases)
        return evaluate(spec.CLAIMS["CHECK-OVERFIT"], {"detector_cases": len(cases), "detector_errors": errors}, "synthetic")

    assert not judged().regression
    monkeypatch.setattr(overfit, "PLATEAU_LEVEL", 0.06)
    assert judged().regression


def test_gpu_faults_count_only_with_their_own_evidence():
    """A GPU fault is caught only when its claim's evidence shows the planted change (Fault.shows): never on the
    evidence a clean GPU run recorded (reports/examples/h200x2-2026-11-28-bigpools), nor on none (a run that broke
    before certify), always on the change itself."""
    import json

    import spec
    from spec.core import evaluate

    examples = FAULTS_DIR.parents[1] / "reports" / "examples" / "h200x2-2026-11-28-bigpools"
    recorded = {c["id"]: c["evidence"] for c in json.loads((examples / "results-gpu-tier.json").read_text())["claims"]}
    merge = json.loads((examples / "run-unsloth-e2e.json").read_text())["merge_check"]
    recorded["MERGE-IS-TRAINED"] = {"gpu": evaluate(spec.CLAIMS["MERGE-IS-TRAINED"], merge, "gpu").evidence}
    clean_boundary = {"unsloth_at_512": True, "layers_reach_unsloth_at_512": True}
    recorded["GC-FALLBACK-BOUNDARY"] = {"gpu": {**recorded["GC-FALLBACK-BOUNDARY"]["gpu"], **clean_boundary}}
    planted = {"MERGE-IS-TRAINED": {"trained_moved_over_merge_error": 0.99, "merged_top1_agreement": 0.156,
                                    "weight_share_min": 0.0},
               "GC-FALLBACK-BOUNDARY": {"unsloth_at_512": True, "layers_reach_unsloth_at_512": False},
               "MASK-USER-TURNS": {"wrongly_trained": 26, "masked_positions_trained_in_batches": 0},
               "GGUF-Q8-EXPORT": {"token_table_entries_differing": 2}}
    gpu_faults = _catalog().GPU_FAULTS
    assert {f.expected_claim for f in gpu_faults} == set(planted)
    for fault in gpu_faults:
        assert fault.shows is not None, fault.id
        assert not any(fault.shows(ev) for ev in recorded[fault.expected_claim].values()), fault.id
        assert not fault.shows({}), fault.id
        assert fault.shows(planted[fault.expected_claim]), fault.id
