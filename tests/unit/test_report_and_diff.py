"""The compliance report and `harness diff` on constructed results."""

import copy
import json
import subprocess
import sys

import pytest

from harness.diff import compare
from harness.report import render, status


def results(verdicts: dict[str, str], regression=(), complete=True) -> dict:
    import spec

    claims = []
    for cid, claim in spec.CLAIMS.items():
        claims.append({"id": cid, "section": claim.section, "tier": claim.tier, "quote": claim.quote,
                       "summary": claim.summary, "expected": claim.expected, "verdict": verdicts.get(cid, "skip"),
                       "regression": cid in regression, "evidence": {"cpu": {"value": 1.0}}, "tests": [], "reason": ""})
    return {"schema": 1, "run": "r", "complete": complete, "started": "t", "claims": claims,
            "environment": {"packages": {"trl": "1.15.0"}}, "extras": {}}


def test_planted_regression_exits_1_and_identical_runs_exit_0(tmp_path):
    """diff exits 1 when NEW regresses where OLD did not, 0 for identical runs, and names the flip."""
    old = results({"LORA-SCALING": "corrected"})
    new = copy.deepcopy(old)
    new["run"] = "r2"
    new["environment"]["packages"]["trl"] = "1.16.0"
    new["claims"][1]["verdict"], new["claims"][1]["regression"] = "fail", True
    new["claims"][1]["evidence"]["cpu"]["value"] = 4.0
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    run = lambda a, b: subprocess.run([sys.executable, "-m", "harness", "diff", str(a), str(b)], capture_output=True, text=True)
    regressed = run(tmp_path / "old.json", tmp_path / "new.json")
    same = run(tmp_path / "old.json", tmp_path / "old.json")
    assert (regressed.returncode, same.returncode) == (1, 0)
    assert "LORA-SCALING: corrected -> fail" in regressed.stdout and "trl: 1.15.0 -> 1.16.0" in regressed.stdout
    d = compare(old, new)
    assert d["evidence_moved"] == [{"id": "LORA-SCALING", "key": "cpu.value", "old": 1.0, "new": 4.0}]


@pytest.mark.parametrize("complete,regression,expected", [(True, (), "certified"), (True, ("LORA-RANK",), "regressions"),
                                                         (False, (), "incomplete")])
def test_header_verdict(complete, regression, expected):
    """The banner says certified, regressions found, or incomplete."""
    assert status(results({}, regression, complete))[0] == expected


def test_report_has_one_row_per_claim_and_no_external_assets():
    """Every catalog claim has a row; nothing is loaded from the network."""
    import spec

    data = results({})
    data["durations"] = {"tests/a.py::test_slow": 20.5, "tests/b.py::test_fast": 0.1}
    page = render(data)
    assert page.count('<tr class="claim') == len(spec.CLAIMS)
    assert "Where the time went" in page and "tests/a.py::test_slow" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_report_shows_the_context_expectation_and_its_band():
    """A context's recorded band shows as "refuted or unsupported", not the claim's default expectation."""
    data = results({"MASK-STABILITY": "unsupported"})
    entry = next(c for c in data["claims"] if c["id"] == "MASK-STABILITY")
    entry["expected_by_context"] = {"gpu": "refuted|unsupported"}
    row = next(r for r in render(data).split('<tr class="claim')[1:] if "<b>MASK-STABILITY</b>" in r)
    assert "refuted or unsupported" in row and ">pass<" not in row
