"""The CPU tier's reference fine-tune in a child process, started as soon as collection ends (tests/slow/conftest.py),
so the rest of the session runs beside it; tests/slow/test_finetune_tiny.py waits for its record.

Why: in-process it was the slowest part of `certify` (40.7 s of 175.6 s on 2 cores, 2026-11-28), mostly single-threaded
Python (60 steps of a hidden-64 model, 16 prompts generated twice), so the second core idled. The child is `python -m
harness finetune` (the CLI users run) with one torch thread; a planted fault reaches it through HARNESS_FAULT
(harness.pytest_plugin.apply_planted_fault_in_finetune)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS, BATCH, EVAL = 60, 2, 16
_STATE: dict = {}


def start(out: Path) -> None:
    """Queue and start the run; an error starting it is kept for record() to raise in the run's own tests."""
    try:
        from harness.run_queue import RunQueue

        # the CLI keeps the memory its steps free on a CPU (harness.malloc_policy): 69.3 → 59.4 s of this run
        queue = RunQueue(1, env={"OMP_NUM_THREADS": "1"}, desc="tiny fine-tune", poll_seconds=0.5,
                         timeline=True, cpu_threads=1)
        queue.add("tiny", out, [sys.executable, "-m", "harness", "finetune", "--model", "tiny", "--backend", "hf",
                                "--out", str(out), "--max-steps", str(STEPS), "--batch-size", str(BATCH),
                                "--eval-limit", str(EVAL)])
        _STATE.update(queue=queue.start(), out=Path(out))
    except Exception as exc:  # noqa: BLE001 (reported by the tests that need the run)
        _STATE["error"] = exc


def stop() -> None:
    if "queue" in _STATE:
        _STATE.pop("queue").stop()


# How long the run's tests wait for it: it took 59 s alone on 2 cores (2026-11-29); a hung child must fail its tests
# with its log, not hold the session until CI's limit.
RECORD_TIMEOUT_S = 900


def record(timeout: float = RECORD_TIMEOUT_S) -> dict:
    """The run's record once complete; AssertionError with its log's tail if it failed or did not finish within
    `timeout` s (then it is stopped, and the run's later tests fail at once). Not started at collection (a pytest-xdist
    worker, a runner that skipped the hook): started now."""
    if "error" in _STATE:
        raise RuntimeError(f"the tiny fine-tune could not be started: {_STATE['error']!r}") from _STATE["error"]
    if "timed_out" in _STATE:
        raise AssertionError(_STATE["timed_out"])
    if "queue" not in _STATE:
        import tempfile

        start(Path(tempfile.mkdtemp(prefix="finetune-tiny-")))
        return record(timeout)
    try:
        outcome = _STATE["queue"].wait("tiny", timeout=timeout)["tiny"]
    except TimeoutError:
        log = _STATE["out"] / "log.txt"
        tail = log.read_text(errors="replace")[-800:] if log.is_file() else "(no log)"
        _STATE["timed_out"] = f"the tiny reference fine-tune did not finish in {timeout} s ({log}); stopped:\n{tail}"
        stop()
        raise AssertionError(_STATE["timed_out"]) from None
    assert outcome.startswith("complete"), f"the tiny reference fine-tune failed ({_STATE['out']}/log.txt): {outcome}"
    return json.loads((_STATE["out"] / "run.json").read_text())


def printed_summary() -> dict:
    """The summary `python -m harness finetune` printed (the JSON before its last line, "run record: <path>")."""
    text = (_STATE["out"] / "log.txt").read_text(errors="replace")
    body, _, tail = text.rpartition("\nrun record: ")
    assert tail.strip() == str(_STATE["out"] / "run.json"), f"the run printed no summary: {text[-500:]}"
    return json.loads(body[body.rindex("\n{\n") + 1:])
