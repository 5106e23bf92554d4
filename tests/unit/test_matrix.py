"""`harness matrix`: a change planted in one leg shows in exactly that column and step; identical legs are "safe";
a leg that could not be installed is a column, not a gap; the page renders in Chromium; the JSON round-trips.

The legs are copies of a real CPU run (reports/examples/cpu-2026-11-27-epyc), laid out as the release-matrix
workflow's artifacts are: legs/leg-<name>/ holding leg.json and a run folder, no `latest` link.
"""

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest

from harness import cli, matrix
from harness.doctor import CHROMIUM_FLAGS, chromium_path

ROOT = Path(__file__).resolve().parents[2]
REAL = json.loads((ROOT / "reports/examples/cpu-2026-11-27-epyc/results.json").read_text())
CHROMIUM = chromium_path()


def make_leg(root: Path, name: str, trl: str, plant=None, install_error: bool = False, log: str | None = None) -> Path:
    """A leg's artifact folder: the real run with trl at `trl`, `plant(data)` applied, and its leg.json (recorded
    from `log`, by default a failed install's)."""
    folder = root / f"leg-{name}"
    constraints = root / f"{name}.txt"
    constraints.write_text(f"transformers==5.17.0\ntrl=={trl}\n")
    if not install_error:
        data = copy.deepcopy(REAL)
        data["run"] = f"20261201-000000-{name}"
        data["environment"]["packages"]["trl"] = trl
        data["environment"]["leg"] = name
        e2e = next(c for c in data["claims"] if c["id"] == "E2E-REFERENCE")
        e2e["evidence"]["tiny"]["run_record"] = f"/tmp/pytest-of-ci/{name}/finetune0"  # a machine's path: not a change
        if plant:
            plant(data)
        (folder / data["run"]).mkdir(parents=True)
        (folder / data["run"] / "results.json").write_text(json.dumps(data))
    path = root / f"tox-{name}.log"
    path.write_text(log if log is not None else "ERROR: Cannot install trl==9.9.9: no matching distribution\n")
    matrix.record_leg(name, folder, constraints, path)
    return folder


def claim(data: dict, cid: str) -> dict:
    return next(c for c in data["claims"] if c["id"] == cid)


def padding_free_on(data):  # the kind of default an Unsloth release sets silently (H100: padding_free → True)
    claim(data, "RECIPE-FIDELITY")["evidence"]["tiny"]["silent_defaults"]["padding_free"] = True


def scaling_fails(data):
    claim(data, "LORA-SCALING").update(verdict="fail", regression=True)


def row_cells(page: str, cid: str) -> list[str]:
    row = re.search(rf'<tr class="claim" data-claim="{cid}">(.*?)</tr>', page).group(1)
    return re.findall(r"<td class=\"([^\"]*)\"", row)


def changed_cells(page: str) -> int:
    return sum("changed" in c.split() for c in re.findall(r'<td class="(cell[^"]*)"', page))


def build(root: Path, legs: list[Path], *extra: str) -> tuple[dict, str]:
    out = root / "out"
    assert cli.main(["matrix", *map(str, legs), "--out", str(out), *extra]) == 0
    return json.loads((out / "matrix.json").read_text()), (out / "matrix.html").read_text()


def test_identical_legs_every_step_safe(tmp_path):
    legs = [make_leg(tmp_path, f"trl-{v}", v) for v in ("1.16.0", "1.14.0", "1.15.0")]
    data, page = build(tmp_path, legs)
    assert [leg["name"] for leg in data["legs"]] == ["trl-1.14.0", "trl-1.15.0", "trl-1.16.0"]  # by version
    assert [(s["status"], s["line"], s["changed"]) for s in data["steps"]] == [("safe", matrix.SAFE, {})] * 2
    assert data["steps"][0]["versions"] == {"trl": ["1.14.0", "1.15.0"]}
    assert changed_cells(page) == 0 and page.count(matrix.SAFE) >= 2


def test_planted_default_shows_in_exactly_that_column(tmp_path):
    legs = [make_leg(tmp_path, "a", "1.13.0"), make_leg(tmp_path, "b", "1.14.0"),
            make_leg(tmp_path, "c", "1.15.0", padding_free_on), make_leg(tmp_path, "d", "1.16.0", padding_free_on)]
    data, page = build(tmp_path, legs)
    assert [s["status"] for s in data["steps"]] == ["safe", "changed", "safe"]
    assert data["steps"][1]["changed"] == {"RECIPE-FIDELITY": {"verdict": None, "evidence": [
        {"key": "tiny.silent_defaults.padding_free", "old": False, "new": True}]}}
    assert data["steps"][1]["line"] == "changed: RECIPE-FIDELITY"
    cells = row_cells(page, "RECIPE-FIDELITY")
    assert [i for i, c in enumerate(cells) if "changed" in c.split()] == [2]  # column c, nothing else
    assert changed_cells(page) == 1 and "tiny.silent_defaults.padding_free: false → true" in page


def test_flipped_verdict_shows_in_that_step(tmp_path):
    legs = [make_leg(tmp_path, "a", "1.14.0"), make_leg(tmp_path, "b", "1.15.0", scaling_fails),
            make_leg(tmp_path, "c", "1.16.0", scaling_fails)]
    data, page = build(tmp_path, legs)
    assert [s["status"] for s in data["steps"]] == ["changed", "safe"]
    assert data["steps"][0]["changed"] == {"LORA-SCALING": {"verdict": ["corrected", "fail"], "evidence": [],
                                                            "regression": [False, True]}}
    assert [r["verdicts"] for r in data["claims"] if r["id"] == "LORA-SCALING"] == [
        {"a": "corrected", "b": "fail", "c": "fail"}]
    assert row_cells(page, "LORA-SCALING") == ["cell v-corrected", "cell v-fail changed", "cell v-fail"]


def bounds_left(data):  # what the unsloth-2026.10.1 GPU leg showed: GC-VRAM stays "corrected", outside its bounds
    claim(data, "LORA-SCALING").update(regression=True, violations=["[tiny] scale = 2.0 ± 0 (observed 1.0)"])


def test_a_regression_under_an_unchanged_verdict_shows_in_that_step(tmp_path):
    legs = [make_leg(tmp_path, "a", "1.14.0"), make_leg(tmp_path, "b", "1.15.0", bounds_left)]
    data, page = build(tmp_path, legs)
    assert data["steps"][0]["changed"] == {"LORA-SCALING": {"verdict": None, "evidence": [],
                                                            "regression": [False, True]}}
    assert [r.get("regressions") for r in data["claims"] if r["id"] == "LORA-SCALING"] == [["b"]]
    assert row_cells(page, "LORA-SCALING") == ["cell v-corrected", "cell v-corrected regression changed"]
    assert "regression: no → yes" in page


def as_gpu(data, complete=True):
    data["environment"]["gpu"] = {"name": "NVIDIA H200", "count": 1}
    data["complete"] = complete


def interrupted(data):
    """A GPU run cut off after its first claims (the unsloth-2026.10.1 leg of 2026-11-28): the rest are skips without
    evidence."""
    as_gpu(data, complete=False)
    for cid in ("E2E-REFERENCE", "RECIPE-FIDELITY", "MASK-USER-TURNS"):
        claim(data, cid).update(verdict="skip", evidence={}, regression=False)


def test_claims_an_interrupted_run_never_reached_are_not_compared(tmp_path):
    legs = [make_leg(tmp_path, "a", "1.14.0", interrupted), make_leg(tmp_path, "b", "1.15.0", as_gpu)]
    data, page = build(tmp_path, legs)
    s = data["steps"][0]
    assert s["status"] == "incomplete" and s["changed"] == {}
    assert s["not_reached"] == {cid: ["a"] for cid in ("MASK-USER-TURNS", "RECIPE-FIDELITY", "E2E-REFERENCE")}
    assert s["line"].startswith("no claim moved among those both legs reached; 3 claims not compared")
    assert row_cells(page, "E2E-REFERENCE") == ["cell v-none not-reached", "cell v-pass"]
    assert matrix.SAFE not in s["line"]
    # a claim the interrupted leg did reach is compared as usual: plant a change there
    legs.append(make_leg(tmp_path, "c", "1.16.0", lambda d: (interrupted(d), bounds_left(d))))
    data, _ = build(tmp_path, legs)
    assert [(x["to"], x["status"]) for x in data["steps"]] == [("b", "incomplete"), ("c", "changed")]
    assert data["steps"][1]["line"] == ("changed: LORA-SCALING; 3 claims not compared: not reached in c "
                                        "(incomplete run)")


def test_timings_between_gpu_legs_are_noise_but_not_between_cpu_legs(tmp_path):
    def timed(seconds, gpu):
        def plant(data):
            if gpu:
                as_gpu(data)
            claim(data, "E2E-REFERENCE")["evidence"]["tiny"]["step_seconds"] = seconds
            claim(data, "LORA-RANK")["evidence"]["tiny"]["grid"] = [{"peak_allocated_mib": 1049.0 + seconds}]
        return plant

    gpu_legs = [make_leg(tmp_path, "g1", "1.14.0", timed(0.29, True)), make_leg(tmp_path, "g2", "1.15.0", timed(0.41, True))]
    data, page = build(tmp_path, gpu_legs)
    s = data["steps"][0]
    assert s["noise"] == {"E2E-REFERENCE": [{"key": "tiny.step_seconds", "old": 0.29, "new": 0.41}]}
    assert list(s["changed"]) == ["LORA-RANK"]  # a memory figure is not noise: bit-identical across GPU runs
    assert "1 figure moved within GPU run-to-run noise" in page
    (tmp_path / "cpu").mkdir()
    cpu_legs = [make_leg(tmp_path / "cpu", "c1", "1.14.0", timed(0.29, False)),
                make_leg(tmp_path / "cpu", "c2", "1.15.0", timed(0.41, False))]
    data, _ = build(tmp_path / "cpu", cpu_legs)
    assert set(data["steps"][0]["changed"]) == {"E2E-REFERENCE", "LORA-RANK"} and "noise" not in data["steps"][0]


def test_leg_that_could_not_be_installed_is_a_column(tmp_path):
    legs = [make_leg(tmp_path, "a", "1.14.0"), make_leg(tmp_path, "broken", "1.15.0", install_error=True),
            make_leg(tmp_path, "c", "1.16.0", padding_free_on), tmp_path / "never-ran"]
    data, page = build(tmp_path, legs)
    columns = {leg["name"]: leg for leg in data["legs"]}
    assert [leg["name"] for leg in data["legs"]] == ["a", "broken", "c", "never-ran"]  # by pins; no versions last
    assert not columns["broken"]["installed"] and "no matching distribution" in columns["broken"]["install_error"]
    assert columns["broken"]["versions"] == {"transformers": "5.17.0", "trl": "1.15.0"}
    assert not columns["never-ran"]["installed"]
    steps = {s["to"]: s for s in data["steps"]}
    assert steps["broken"]["status"] == "not installed"
    assert steps["c"]["from"] == "a" and list(steps["c"]["changed"]) == ["RECIPE-FIDELITY"]  # nearest installed leg
    assert row_cells(page, "LORA-RANK") == ["cell v-corrected", "cell not-installed", "cell v-corrected",
                                            "cell not-installed"]
    assert page.count(f"<b>{matrix.NOT_INSTALLED}</b>") == 2


def pytest_log(*failed: str, passed: int = 395) -> str:
    """A leg's log as tox prints it: pip's noise, pytest -q's dots, its short summary and last line."""
    lines = ["Successfully installed trl-1.15.0", "....F....", "=========== short test summary info ===========",
             *(f"FAILED {t} - AssertionError: assert 0 == 6" for t in failed),
             f"{len(failed)} failed, {passed} passed, 15 skipped in 956.38s (0:15:56)" if failed else
             f"{passed} passed, 15 skipped in 500.32s (0:08:20)", "pytest exit 1" if failed else "pytest exit 0"]
    return "\n".join(lines) + "\n"


PROBE = "tests/unit/test_lora_quant_probe.py::test_mechanism_runs_end_to_end_on_the_cpu_and_feeds_the_check"


def test_failing_non_claim_tests_show_in_that_leg_and_step(tmp_path):
    """A leg whose claims all hold but whose other tests fail (transformers 5.24.0's probe tests before f0e789b) is not
    "safe": its column lists the failing tests and the step into it says so; the step out of it names them fixed."""
    legs = [make_leg(tmp_path, "a", "1.14.0", log=pytest_log()), make_leg(tmp_path, "b", "1.15.0", log=pytest_log(PROBE)),
            make_leg(tmp_path, "c", "1.16.0", log=pytest_log(PROBE)), make_leg(tmp_path, "d", "1.17.0", log=pytest_log()),
            make_leg(tmp_path, "e", "1.18.0")]  # no test summary in its log: unknown, not "no failures"
    record = json.loads((legs[1] / "leg.json").read_text())
    assert record["tests"] == {"summary": "1 failed, 395 passed, 15 skipped in 956.38s (0:15:56)", "failed": [PROBE],
                               "exit": 1}
    assert json.loads((legs[4] / "leg.json").read_text())["tests"] is None
    data, page = build(tmp_path, legs)
    assert [(s["status"], s["changed"]) for s in data["steps"]] == [("tests failed", {}), ("safe", {}), ("safe", {}),
                                                                     ("safe", {})]
    assert data["steps"][0]["line"] == "no claim moved, but 1 test newly failing"
    assert data["steps"][0]["tests"] == {"newly_failing": [PROBE], "no_longer_failing": []}
    assert "tests" not in data["steps"][1] and data["steps"][2]["tests"] == {"newly_failing": [],
                                                                             "no_longer_failing": [PROBE]}
    assert changed_cells(page) == 0  # no claim cell moves
    assert page.count(f"<li>{PROBE}</li>") == 2 and page.count(f"<li>newly failing: {PROBE}</li>") == 1
    assert page.count('class="tests tests-failed"') == 2
    # a moved claim and a failing test in one step: both said
    (tmp_path / "2").mkdir()
    legs = [make_leg(tmp_path / "2", "a", "1.14.0", log=pytest_log()),
            make_leg(tmp_path / "2", "b", "1.15.0", padding_free_on, log=pytest_log(PROBE))]
    data, _ = build(tmp_path / "2", legs)
    assert data["steps"][0]["line"] == "changed: RECIPE-FIDELITY; 1 test newly failing"


def other_commit(data):
    data["environment"].update(git_commit="0123456789ab", source_digest="0123456789abcdef")


def test_a_leg_of_another_suite_commit_is_compared_with_its_own_commit(tmp_path):
    """Legs run on two commits of the suite (a new dataset moves every count) interleave by version: each step
    compares legs of one commit, and a leg with no earlier leg of its commit is "not comparable", never "changed"."""
    legs = [make_leg(tmp_path, "a", "1.13.0", other_commit), make_leg(tmp_path, "b", "1.14.0"),
            make_leg(tmp_path, "c", "1.15.0", lambda d: (other_commit(d), padding_free_on(d))),
            make_leg(tmp_path, "d", "1.16.0")]
    data, page = build(tmp_path, legs)
    assert [(s["from"], s["to"], s["status"]) for s in data["steps"]] == [
        ("a", "b", "not comparable"), ("a", "c", "changed"), ("b", "d", "safe")]
    assert data["steps"][0]["line"] == (f"not comparable: suite code 0123456789abcdef → {REAL['environment']['source_digest']}"
                                        " (rerun both legs on one commit)")
    assert list(data["steps"][1]["changed"]) == ["RECIPE-FIDELITY"] and changed_cells(page) == 1


def test_legs_are_compared_by_the_code_that_ran_not_the_commit_recorded(tmp_path):
    """Planted: a leg run from a tree with uncommitted edits records its base commit, and the edits change what it
    measures. Compared by commit its step would read "changed" (the newest leg of the 2026-11-28 legs example did);
    compared by source digest it is "not comparable". The same code recorded under another commit is comparable."""
    def edited(data):
        data["environment"].update(git_dirty=True, source_digest="feedfacefeedface")
        padding_free_on(data)

    def same_code_other_commit(data):
        data["environment"]["git_commit"] = "0123456789ab"

    legs = [make_leg(tmp_path, "a", "1.14.0"), make_leg(tmp_path, "b", "1.15.0", edited),
            make_leg(tmp_path, "c", "1.16.0", same_code_other_commit)]
    data, page = build(tmp_path, legs)
    assert [(s["from"], s["to"], s["status"]) for s in data["steps"]] == [
        ("a", "b", "not comparable"), ("a", "c", "safe")]
    assert "feedfacefeedface" in data["steps"][0]["line"] and changed_cells(page) == 0
    assert "+ edits, code feedfacefeedface" in page


def test_record_leg_without_results_keeps_the_log_tail(tmp_path):
    record = json.loads((make_leg(tmp_path, "x", "1.15.0", install_error=True) / "leg.json").read_text())
    assert record["leg"] == "x" and record["pins"]["trl"] == "1.15.0"
    assert record["install_error"].startswith("no results.json") and "no matching distribution" in record["install_error"]
    assert json.loads((make_leg(tmp_path, "y", "1.15.0") / "leg.json").read_text())["install_error"] is None


def test_json_round_trips_and_output_is_deterministic(tmp_path):
    legs = [make_leg(tmp_path, "a", "1.14.0"), make_leg(tmp_path, "c", "1.15.0", padding_free_on),
            make_leg(tmp_path, "n", "1.16.0", install_error=True)]
    built = matrix.build(legs)
    assert json.loads(json.dumps(built)) == built
    first = [p.read_bytes() for p in matrix.write(built, tmp_path / "one")]
    second = [p.read_bytes() for p in matrix.write(matrix.build(legs), tmp_path / "two")]
    assert first == second
    assert json.loads(first[0]) == built
    assert matrix.render(json.loads(first[0])).encode() == first[1]  # the page can be rebuilt from the JSON alone


def test_evidence_comparison_rules():
    assert matrix.same(1.0, 1.0 + 1e-9) and not matrix.same(1.0, 1.001)
    assert matrix.same([1.0, 2.0], [1.0, 2.0 + 1e-9]) and not matrix.same([1.0], [1.0, 2.0])
    assert matrix.same(float("nan"), float("nan")) and not matrix.same(0, False) and not matrix.same(None, "None")
    assert matrix.same("/tmp/a/run", "/home/ci/run") and not matrix.same("512", "None")
    assert matrix.flatten({"a": {"b": [1, 2]}, "g": [{"s": 1}]}) == {"a.b": [1, 2], "g[0].s": 1}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: apt-get install chromium chromium-driver")
def test_matrix_renders_in_chromium(tmp_path):
    """Headless Chromium (as the report's browser test): every claim row, every leg column, no console error."""
    legs = [make_leg(tmp_path, "a", "1.14.0"), make_leg(tmp_path, "b", "1.15.0", install_error=True),
            make_leg(tmp_path, "c", "1.16.0", padding_free_on)]
    data, _ = build(tmp_path, legs)
    path = tmp_path / "out" / "matrix.html"
    flags = [*CHROMIUM_FLAGS, "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    shot = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'p2'}", "--window-size=1400,2000",
                           f"--screenshot={tmp_path / 'matrix.png'}", path.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert dom.stdout.count('<tr class="claim"') == len(data["claims"]) == len(REAL["claims"])
    assert dom.stdout.count('<th class="leg') == 3 and dom.stdout.count('class="cell v-') == 2 * len(REAL["claims"])
    assert re.findall(r'data-status="(\w[\w ]*)"', dom.stdout)[:2] == ["not installed", "changed"]
    errors = [l for l in dom.stderr.splitlines() if "Uncaught" in l or re.search(r"CONSOLE.*error", l, re.I)]
    assert errors == []
    assert shot.returncode == 0 and (tmp_path / "matrix.png").stat().st_size > 10_000
