"""The compliance report and `harness diff` on constructed results."""

import copy
import json
import re
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


def test_report_shows_what_torch_compiled_again_and_names_a_function_at_its_limit():
    """extras.finetune.dynamo (the GPU tier's reference run): recompiles per function with their compiled entries and
    the limit of the run's torch; a function at the limit is named in a banner. Nothing where the logs were off."""
    from harness.record_facts import dynamo_recompiles

    log = ("HARNESS_LOG_RECOMPILES: torch's recompile and graph-break logs are on\n"
           "HARNESS_LOG_RECOMPILES: torch's recompile limit is {limit}\n"
           "V1129 14:57:33.564000 2882 torch/_dynamo/guards.py:4760] [2/7] [__recompiles] Recompiling function forward "
           "in /x/transformers/models/gemma3/modeling_gemma3.py:399\n")
    data = results({})
    data["extras"] = {"finetune": {"dynamo": dynamo_recompiles(log.format(limit=1024))}}
    page = render(data)
    assert "torch's compiler in the reference run" in page and "recompile limit 1024" in page
    assert "<td>forward in gemma3/modeling_gemma3.py:399</td><td>1</td><td>8</td>" in page
    assert "At the recompile limit" not in page
    data["extras"]["finetune"]["dynamo"] = dynamo_recompiles(log.format(limit=8))  # torch's default: 8 entries of 8
    assert "At the recompile limit: forward in gemma3/modeling_gemma3.py:399" in render(data)
    data["extras"]["finetune"]["dynamo"] = dynamo_recompiles(log.split("\n", 1)[1])  # the logs were off
    assert "compiler in the reference run" not in render(data)


def test_report_shows_the_context_expectation_and_its_band():
    """A context's recorded band shows as "refuted or unsupported", not the claim's default expectation."""
    data = results({"MASK-STABILITY": "unsupported"})
    entry = next(c for c in data["claims"] if c["id"] == "MASK-STABILITY")
    entry["expected_by_context"] = {"gpu": "refuted|unsupported"}
    row = next(r for r in render(data).split('<tr class="claim')[1:] if "<b>MASK-STABILITY</b>" in r)
    assert "refuted or unsupported" in row and ">pass<" not in row


def test_the_timeline_shows_background_runs_and_the_longest_tests_in_order_of_start():
    """harness.report.timeline_svg: every background run, then the longest tests up to TIMELINE_ROWS rows, sorted by
    start; a run still going is drawn pale to the time of writing. Planted: a short test dropped at the row limit."""
    from harness import report

    tests = {f"tests/t.py::test_{i}": [float(i), float(i) + 1 + i] for i in range(report.TIMELINE_ROWS + 5)}
    timeline = {"written_s": 900.0, "tests": tests,
                "runs": [{"queue": "GPU tier fine-tunes", "name": "e2e", "start_s": 0.5, "end_s": 663.0, "outcome": "complete in 663 s",
                          "phases": {"load": 29.6, "train": 281.5, "evaluate": 211.0}},
                         {"queue": "GPU tier probes", "name": "vram-False", "start_s": 2.0, "end_s": None, "outcome": None}]}
    svg = report.timeline_svg(timeline)
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    assert labels[:3] == ["GPU tier fine-tunes: e2e", "GPU tier probes: vram-False", "test_7"]  # by start
    assert "test_6" not in labels and f"test_{report.TIMELINE_ROWS + 4}" in labels  # the shortest tests left out
    assert len(labels) == report.TIMELINE_ROWS
    assert "vram-False: 2.0-900.0 s (still going)" in svg and 'fill-opacity="0.45"' in svg
    # the record's phases end with the run: evaluate from 452.0 to 663.0 s, train before it, named inside the bar
    assert "GPU tier fine-tunes: e2e · evaluate: 211.0 s" in svg and ">train</text>" in svg
    x_train, x_eval = (float(re.search(rf'<rect x="([0-9.]+)"[^>]*><title>GPU tier fine-tunes: e2e · {p}:', svg)[1])
                       for p in ("train", "evaluate"))
    assert x_train < x_eval
    assert report.timeline_svg({}) == "" and report.timeline_svg({"tests": {}, "runs": []}) == ""


def test_the_timeline_keeps_its_legend_and_phases_inside_and_counts_what_it_leaves_out():
    """Four long queue names (a merged certify --gpu run) stay inside the chart's width; phases longer than their run
    stay inside its bar; with more runs than TIMELINE_RUN_ROWS the longest are drawn and the rest counted."""
    from harness import report

    runs = [{"queue": f"{tier} tier: GPU tier {kind}", "name": f"r{i}", "start_s": float(i), "end_s": 10.0 + 3 * i,
             "outcome": "complete"} for i, (tier, kind) in enumerate([("cpu", "fine-tunes"), ("cpu", "probes"),
                                                                      ("gpu", "fine-tunes"), ("gpu", "probes")] * 10)]
    runs[0].update(end_s=190.0, phases={"load": 100.0, "train": 150.0, "evaluate": 20.0})  # 270 s in a 190 s span
    svg = report.timeline_svg({"written_s": 200.0, "tests": {}, "runs": runs})
    for x, text in re.findall(r'<text x="([0-9.]+)" y="[0-9.]+" font-size="11">([^<]+)</text>', svg):
        if "tier" in text:
            assert float(x) + 6.5 * len(text) <= 760
    rect = r'<rect x="([0-9.]+)" y="[0-9.]+" width="([0-9.]+)"[^>]*><title>cpu tier: GPU tier fine-tunes: r0'
    bar = re.search(rect + ":", svg)
    segments = re.findall(rect + " · ", svg)
    assert segments and all(float(x) + float(w) <= float(bar[1]) + float(bar[2]) + 0.2 for x, w in segments)
    assert svg.count("<title>") - 1 - sum(1 for _ in re.finditer(r' · ', svg)) == report.TIMELINE_RUN_ROWS
    assert f"not shown: {40 - report.TIMELINE_RUN_ROWS} shorter runs" in svg
