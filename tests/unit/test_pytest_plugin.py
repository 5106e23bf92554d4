"""Another repository uses the claims plugin: the installed entry point gives it the marker, `certify` and a report."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

USER_TEST = '''
import pytest


@pytest.mark.claim("LORA-SCALING")
def test_my_adapter_scaling(certify):
    certify("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": [2.0] * 7}, "tiny")


@pytest.mark.claim("LORA-RANK")
def test_my_ranks(certify):
    adapters = [{"name": f"layers.0.{m}", "a_shape": (16, 64), "b_shape": (64, 16), "in_features": 64, "out_features": 64}
                for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    certify("LORA-RANK", {"r": 16, "adapters": adapters}, "tiny")  # rank 16 where the handbook's recipe has 32


@pytest.mark.claim("LORA-INIT")
def test_my_init_then_a_later_check(certify):
    certify("LORA-INIT", {"b_max_abs": 0.0, "logits_max_abs_diff": 0.0, "modules": 7}, "tiny")
    assert 1 + 1 == 3, "a check after certify failed"
'''


def test_a_scratch_repository_gets_marker_certify_and_results(tmp_path):
    entry_points = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    if "harness.pytest_plugin" not in entry_points:
        pytest.skip("handbook-suite is not pip-installed here (no pytest11 entry point): pip install -e .")
    (tmp_path / "test_mine.py").write_text(USER_TEST)
    env = {**os.environ, "HARNESS_REPORTS": str(tmp_path / "reports")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-1500:]  # the rank-16 adapter is a regression of LORA-RANK
    assert "REGRESSIONS: LORA-RANK, LORA-INIT" in proc.stdout
    data = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert data["complete"] and claims["LORA-SCALING"]["verdict"] == "corrected"
    assert claims["LORA-RANK"]["regression"] and "ranks == [32] (observed [16])" in claims["LORA-RANK"]["violations"][0]
    assert claims["LORA-RANK"]["tests"] == ["test_mine.py::test_my_ranks"]
    # certify recorded LORA-INIT as pass, then an assertion of the same test failed: the claim is red
    assert claims["LORA-INIT"]["verdict"] == "fail" and claims["LORA-INIT"]["regression"]
    assert "a check after certify failed" in claims["LORA-INIT"]["reason"]
    assert set(data["durations"]) == {"test_mine.py::test_my_adapter_scaling", "test_mine.py::test_my_ranks",
                                      "test_mine.py::test_my_init_then_a_later_check"}
    # provenance: no checkout here, so no commit, but the digest of the code that ran
    assert data["environment"]["git_commit"] is None or len(data["environment"]["git_commit"]) == 12
    assert len(data["environment"]["source_digest"]) == 16
    assert "Where the time went" in (tmp_path / "reports" / "latest" / "index.html").read_text()
