"""scripts/time_certify.py summarizes a run's results.json (no certify run here: timings are never asserted)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_summary_of_a_recorded_run(tmp_path):
    spec = importlib.util.spec_from_file_location("time_certify", ROOT / "scripts" / "time_certify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"run": "r1", "environment": {"git_commit": "abc", "git_dirty": False, "cpu_count": 2,
                                                                "source_digest": "d" * 16, "packages": {"torch": "2.13.0"}},
                                   "durations": {"a": 1.5, "b": 4.0, "c": 0.5},
                                   "extras": {"self_tests_not_run": {"count": 7, "why": "x"}}}))
    out = tmp_path / "timing.json"
    assert module.main(["--results", str(results), "--wall", "9.5", "--out", str(out)]) == 0
    timing = json.loads(out.read_text())
    assert timing["wall_s"] == 9.5 and timing["tests"] == 3 and timing["tests_seconds"] == 6.0
    assert [s["test"] for s in timing["slowest"]] == ["b", "a", "c"] and timing["self_tests_not_run"] == 7
    assert timing["suite"] == {"git_commit": "abc", "git_dirty": False, "source_digest": "d" * 16}
