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
