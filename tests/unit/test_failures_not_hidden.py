"""Failures must not hide: a claim checked before and skipped now, a version leg's broken import, the run's provenance."""

import copy
import subprocess
from types import SimpleNamespace

from harness.diff import compare, diff_main, lost_coverage
from harness.doctor import leg_breakage
from harness.results import provenance, source_digest


def _run(verdicts: dict, **extra) -> dict:
    claims = []
    for cid, verdict in verdicts.items():
        entry = {"id": cid, "verdict": verdict, "regression": False, "evidence": {}, "reason": ""}
        entry.update(extra.get(cid, {}))
        claims.append(entry)
    return {"run": "r", "claims": claims, "environment": {"packages": {}}}


def test_pass_to_skip_is_lost_coverage_and_exits_1(tmp_path):
    old = _run({"MASK-USER-TURNS": "pass", "LR-COSINE": "pass"})
    new = _run({"MASK-USER-TURNS": "skip", "LR-COSINE": "pass"},
               **{"MASK-USER-TURNS": {"reason": "unsloth_zoo masker unavailable"}})
    d = compare(old, new)
    assert lost_coverage(d) == ["MASK-USER-TURNS"] and d["new_regressions"] == []
    (tmp_path / "old.json").write_text(__import__("json").dumps(old))
    (tmp_path / "new.json").write_text(__import__("json").dumps(new))
    assert diff_main(str(tmp_path / "old.json"), str(tmp_path / "new.json")) == 1


def test_skip_for_a_named_environment_problem_is_said_not_counted():
    old = _run({"GGUF-LLAMACPP": "pass"})
    problem = "environment problem: llama.cpp: crashed on Google's own GGUF — fix: rebuild"
    new = _run({"GGUF-LLAMACPP": "skip"}, **{"GGUF-LLAMACPP": {"reason": problem, "environment_problem": problem}})
    d = compare(old, new)
    assert lost_coverage(d) == [] and d["newly_unchecked"][0]["environment_problem"]


def test_identical_runs_lose_nothing():
    run = _run({"LORA-RANK": "corrected", "GC-VRAM": "skip"})
    assert lost_coverage(compare(run, copy.deepcopy(run))) == []


def _skip_report(reason: str):
    return SimpleNamespace(skipped=True, outcome="skipped", longrepr=("f.py", 1, f"Skipped: {reason}"))


def test_inside_a_leg_a_broken_unsloth_zoo_import_fails(monkeypatch):
    reason = "environment problem: unsloth_zoo: importing its masking function failed (ImportError: x) — fix: pip"
    monkeypatch.setenv("HARNESS_LEG", "canary")
    report = _skip_report(reason)
    leg_breakage(report)
    assert report.outcome == "failed" and "version leg 'canary'" in report.longrepr
    other = _skip_report("environment problem: llama.cpp: crashed — fix: rebuild")
    leg_breakage(other)  # a native reader is the machine's problem, leg or not
    assert other.outcome == "skipped"


def test_outside_a_leg_it_stays_an_environment_problem(monkeypatch):
    monkeypatch.delenv("HARNESS_LEG", raising=False)
    report = _skip_report("environment problem: unsloth_zoo: not installed — fix: pip")
    leg_breakage(report)
    assert report.outcome == "skipped"


def test_provenance_names_the_checkout_of_the_code_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a directory that is no checkout: the commit is still the suite's own
    facts = provenance()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=str(__import__("harness").__path__[0])).stdout.strip() or None
    assert facts["git_commit"] == head
    assert facts["git_dirty"] in (True, False, None)


def test_source_digest_changes_with_the_code(tmp_path):
    for top in ("harness", "spec", "tests"):
        (tmp_path / top).mkdir()
        (tmp_path / top / "a.py").write_text("x = 1\n")
    before = source_digest(tmp_path)
    (tmp_path / "spec" / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path) != before and len(before) == 16
    for data in ("spec/baselines/b.json", "conftest.py", "pyproject.toml"):  # recorded expectations, fixtures, options
        before = source_digest(tmp_path)
        (tmp_path / data).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / data).write_text("{}")
        assert source_digest(tmp_path) != before, data
    before = source_digest(tmp_path)
    (tmp_path / "tests" / "__pycache__").mkdir()
    (tmp_path / "tests" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest(tmp_path) == before  # compiled files are not the code
    assert provenance(tmp_path)["git_commit"] is None  # no .git: no commit claimed, the digest stands
