"""The CPU tier's background tiny fine-tune (tests/slow/finetune_tiny_run.py): a run that hangs fails its tests with
its log after a bounded wait, instead of holding the session until CI's limit."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slow"))
import finetune_tiny_run  # noqa: E402


class HungQueue:
    def __init__(self):
        self.stopped = False

    def wait(self, names, timeout=None):
        raise TimeoutError(f"runs still going after {timeout} s: ['tiny']")

    def stop(self):
        self.stopped = True


def test_a_run_that_does_not_finish_fails_its_tests_with_its_log(tmp_path, monkeypatch):
    queue = HungQueue()
    (tmp_path / "log.txt").write_text("step 12/60 ... (stuck)")
    monkeypatch.setattr(finetune_tiny_run, "_STATE", {"queue": queue, "out": tmp_path})
    with pytest.raises(AssertionError, match=r"did not finish in 0.1 s(.|\n)*stuck"):
        finetune_tiny_run.record(timeout=0.1)
    assert queue.stopped  # the child is killed, not left running
    with pytest.raises(AssertionError, match="did not finish"):  # the run's later tests fail at once, no new run
        finetune_tiny_run.record(timeout=0.1)
