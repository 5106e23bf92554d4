"""RunQueue: background subprocess runs, a few at a time, resumable, never leaving a waiter hanging."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.run_queue import RunQueue, complete

ROOT = Path(__file__).resolve().parents[2]


def _writes_run_json(folder: Path, code: int = 0, complete_flag: bool = True, sleep: float = 0.0) -> list[str]:
    script = (f"import json, pathlib, sys, time; time.sleep({sleep}); "
              f"pathlib.Path({str(folder)!r}, 'run.json').write_text(json.dumps({{'complete': {complete_flag}}})); "
              f"print('ran'); sys.exit({code})")
    return [sys.executable, "-c", script]


def test_runs_complete_fail_and_resume(tmp_path):
    """Three runs two at a time: a clean exit is complete, a non-zero exit or an incomplete run.json is a failure."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "run.json").write_text(json.dumps({"complete": True}))
    queue = RunQueue(2, desc="test", poll_seconds=0.1)
    queue.add("ok", tmp_path / "ok", _writes_run_json(tmp_path / "ok"))
    queue.add("crash", tmp_path / "crash", _writes_run_json(tmp_path / "crash", code=3))
    queue.add("half", tmp_path / "half", _writes_run_json(tmp_path / "half", complete_flag=False))
    queue.add("earlier", earlier, [sys.executable, "-c", "raise SystemExit(9)"])  # complete already: never run
    outcomes = queue.start().wait_all(timeout=60)
    assert outcomes["ok"].startswith("complete in")
    assert outcomes["crash"].startswith("failed (exit 3") and "ran" in outcomes["crash"]
    assert outcomes["half"].startswith("failed (exit 0, run.json complete: False)")
    assert outcomes["earlier"] == "complete (earlier)"
    assert (tmp_path / "ok" / "log.txt").read_text().strip() == "ran"
    assert complete(tmp_path / "ok") and not complete(tmp_path / "half")


def test_waiting_for_one_run_does_not_wait_for_the_others(tmp_path):
    """wait(name) returns once that run is done while a slower one still runs."""
    queue = RunQueue(2, desc="test", poll_seconds=0.1)
    queue.add("fast", tmp_path / "fast", _writes_run_json(tmp_path / "fast"))
    queue.add("slow", tmp_path / "slow", _writes_run_json(tmp_path / "slow", sleep=30))
    queue.start()
    try:
        assert queue.wait("fast", timeout=25)["fast"].startswith("complete")
        assert "slow" not in queue.outcomes
        with pytest.raises(TimeoutError, match="slow"):
            queue.wait("slow", timeout=0.5)
        with pytest.raises(KeyError, match="nope"):
            queue.wait("nope")
    finally:
        queue.stop()


def test_stop_kills_what_runs_and_records_why(tmp_path):
    """stop() at the end of a session kills unfinished runs; their outcome says so, and waiters return."""
    queue = RunQueue(1, desc="test", poll_seconds=0.1)
    queue.add("long", tmp_path / "long", [sys.executable, "-c", "import time; time.sleep(120)"])
    queue.add("queued", tmp_path / "queued", [sys.executable, "-c", "pass"])
    queue.start()
    time.sleep(1)
    began = time.time()
    queue.stop()
    assert time.time() - began < 15
    assert queue.wait_all(timeout=5) == {"long": "failed: stopped at the end of the session",
                                         "queued": "failed: stopped at the end of the session"}


def test_gpu_tests_run_in_phase_order():
    """Collected GPU tests: short probes first, then those waiting for background runs, then the timings."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "--no-report",
                          "-p", "no:cacheprovider", "tests/gpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert ids, out.stdout + out.stderr
    first = {name: next(i for i, nid in enumerate(ids) if name in nid) for name in
             ("test_gc_vram_grid", "test_experiments_over_three_seeds", "test_reference_finetune_end_to_end",
              "test_training_step_time")}
    assert first["test_gc_vram_grid"] < first["test_experiments_over_three_seeds"] < first["test_training_step_time"]
    assert first["test_gc_vram_grid"] < first["test_reference_finetune_end_to_end"] < first["test_experiments_over_three_seeds"]
    assert "test_performance" in ids[-1]
