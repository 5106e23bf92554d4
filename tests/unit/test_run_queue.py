"""RunQueue: background subprocess runs, a few at a time, resumable, never leaving a waiter hanging."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.run_queue import RunQueue, complete, visible_devices

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


def _records_device(folder: Path, sleep: float) -> list[str]:
    script = (f"import json, os, pathlib, time; t0 = time.time(); time.sleep({sleep}); "
              f"pathlib.Path({str(folder)!r}, 'run.json').write_text(json.dumps({{'complete': True, "
              f"'device': os.environ.get('CUDA_VISIBLE_DEVICES'), 'start': t0, 'end': time.time()}}))")
    return [sys.executable, "-c", script]


def test_runs_spread_over_gpus_one_gpu_each(tmp_path):
    """devices: each run is started with CUDA_VISIBLE_DEVICES set to one GPU, the one with the most free slots: 6 runs
    over GPUs "0" (2 slots) and "3" (1 slot) run 3 at once, never more than a GPU's slots on it at a time."""
    queue = RunQueue(1, desc="test", poll_seconds=0.05, devices={"0": 2, "3": 1})
    assert queue.slots == 3
    for i in range(6):
        queue.add(f"r{i}", tmp_path / f"r{i}", _records_device(tmp_path / f"r{i}", 0.6))
    outcomes = queue.start().wait_all(timeout=60)
    assert all(o.startswith("complete") for o in outcomes.values()), outcomes
    runs = {name: json.loads((tmp_path / name / "run.json").read_text()) for name in outcomes}
    assert {name: r["device"] for name, r in runs.items()} == queue.placed
    assert sorted(queue.placed.values()).count("0") >= 3 and "3" in queue.placed.values()
    for device, slots in (("0", 2), ("3", 1)):
        mine = [r for r in runs.values() if r["device"] == device]
        for r in mine:  # at r's start, how many runs of the same GPU were going (itself included)
            assert sum(o["start"] <= r["start"] < o["end"] for o in mine) <= slots


def test_one_gpu_or_none_leaves_cuda_visible_devices_alone(tmp_path, monkeypatch):
    """Without devices, a run sees what the parent sees; visible_devices() reads CUDA_VISIBLE_DEVICES."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    queue = RunQueue(2, desc="test", poll_seconds=0.05)
    queue.add("plain", tmp_path / "plain", _records_device(tmp_path / "plain", 0.0))
    queue.start().wait_all(timeout=30)
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["device"] is None and queue.placed == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_devices() == []
    with pytest.raises(ValueError, match="no GPU slots"):
        RunQueue(1, devices=[])


def test_gpu_tests_run_in_phase_order():
    """Collected GPU tests: short probes first, then those waiting for background runs, then the timings."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "--no-report",
                          "-p", "no:cacheprovider", "tests/gpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert ids, out.stdout + out.stderr
    first = {name: next(i for i, nid in enumerate(ids) if name in nid) for name in
             ("test_gc_vram_grid", "test_experiment_claims", "test_reference_finetune_end_to_end",
              "test_training_step_time")}
    assert first["test_gc_vram_grid"] < first["test_experiment_claims"] < first["test_training_step_time"]
    assert first["test_gc_vram_grid"] < first["test_reference_finetune_end_to_end"] < first["test_experiment_claims"]
    assert "test_performance" in ids[-1]


def _records_env(folder: Path) -> list[str]:
    script = (f"import json, os, pathlib; pathlib.Path({str(folder)!r}, 'run.json').write_text(json.dumps({{"
              f"'complete': True, 'device': os.environ.get('CUDA_VISIBLE_DEVICES'), "
              f"'share': os.environ['HARNESS_EVAL_MEMORY_SHARE'], 'threads': os.environ['OMP_NUM_THREADS']}}))")
    return [sys.executable, "-c", script]


@pytest.mark.parametrize("slots, devices, runs, share, at_once", [
    (13, None, 1, {None: "0.2500"}, 1),  # the reference run queued alone: the whole quarter, every core
    (13, None, 2, {None: "0.1250"}, 2),
    (3, None, 6, {None: "0.0833"}, 3),
    (1, {"0": 2, "3": 1}, 6, {"0": "0.1250", "3": "0.2500"}, 3),  # per GPU: its own slots
    # two runs over two GPUs land one on each, but a GPU is counted as possibly holding both (placement follows free
    # slots as runs end: an over-count only shrinks a batch, an under-count could starve a neighbour's training step)
    (1, {"0": 13, "1": 13}, 2, {"0": "0.1250", "1": "0.1250"}, 2),
])
def test_runs_are_given_the_memory_and_cores_of_the_runs_really_at_once(tmp_path, slots, devices, runs, share, at_once):
    """A run's share of the GPU memory (HARNESS_EVAL_MEMORY_SHARE: what its evaluation batch may take) and its threads
    count the runs that can be at once, not the queue's capacity (planted: one run in a 13-slot queue on an idle H200
    was given 1/13 of a quarter and grew its batch only to 64)."""
    import os

    queue = RunQueue(slots, desc="test", poll_seconds=0.05, devices=devices)
    for i in range(runs):
        queue.add(f"r{i}", tmp_path / f"r{i}", _records_env(tmp_path / f"r{i}"))
    outcomes = queue.start().wait_all(timeout=60)
    assert all(o.startswith("complete") for o in outcomes.values()), outcomes
    for name in outcomes:
        seen = json.loads((tmp_path / name / "run.json").read_text())
        assert seen["share"] == share[seen["device"]]
        assert seen["threads"] == str(max(1, (os.cpu_count() or 2) // at_once))


def test_the_callers_environment_wins(tmp_path):
    queue = RunQueue(13, env={"OMP_NUM_THREADS": "1", "HARNESS_EVAL_MEMORY_SHARE": "0.5"}, desc="test",
                     poll_seconds=0.05)
    queue.add("r", tmp_path / "r", _records_env(tmp_path / "r"))
    assert queue.start().wait_all(timeout=60)["r"].startswith("complete")
    seen = json.loads((tmp_path / "r" / "run.json").read_text())
    assert (seen["share"], seen["threads"]) == ("0.5", "1")


PARENT = '''
import sys, time
from pathlib import Path
from harness.run_queue import RunQueue
folder = Path(sys.argv[1])
queue = RunQueue(1, desc="parent", poll_seconds=0.1)
queue.add("sleeper", folder, [sys.executable, "-c",
          "import os, pathlib, time; pathlib.Path(%r, 'pid').write_text(str(os.getpid())); time.sleep(300)" % str(folder)])
queue.start()
time.sleep(300)
'''


def test_a_background_run_dies_with_the_process_that_queued_it(tmp_path):
    """pytest killed with SIGKILL (no teardown runs) used to leave its background fine-tune running; now the kernel
    stops it (planted: without the wrapper the sleeper outlives its parent by its whole 300 s)."""
    import os
    import signal

    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "run")], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid_file = tmp_path / "run" / "pid"
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:  # a zombie until its new parent reaps it: gone for our purpose once it is no longer running
            if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the background run outlived the process that queued it")


def test_the_probe_queue_keeps_the_callers_gpu_settings_and_shares_only_threads(tmp_path, monkeypatch):
    """gpu_sharing_env=False (the GPU probes): no expandable segments nor memory share (GC-VRAM's reserved figures stay
    comparable with the recorded grids), the threads still shared."""
    import os

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("HARNESS_EVAL_MEMORY_SHARE", raising=False)
    script = (f"import json, os, pathlib; pathlib.Path({str(tmp_path / 'r')!r}, 'run.json').write_text(json.dumps({{"
              f"'complete': True, 'alloc': os.environ.get('PYTORCH_CUDA_ALLOC_CONF'), "
              f"'share': os.environ.get('HARNESS_EVAL_MEMORY_SHARE'), 'threads': os.environ.get('OMP_NUM_THREADS')}}))")
    queue = RunQueue(2, desc="test", poll_seconds=0.05, gpu_sharing_env=False)
    queue.add("r", tmp_path / "r", [sys.executable, "-c", script])
    assert queue.start().wait_all(timeout=60)["r"].startswith("complete")
    seen = json.loads((tmp_path / "r" / "run.json").read_text())
    assert (seen["alloc"], seen["share"]) == (None, None)
    assert seen["threads"] == str(max(1, (os.cpu_count() or 2) // 1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux")
def test_a_run_starts_with_sigpipe_and_sigxfsz_at_their_defaults(tmp_path):
    """The wrapper is a Python process, which ignores SIGPIPE and SIGXFSZ, and an ignored signal survives execvp: a
    shell pipeline in a run would then see EPIPE instead of dying quietly."""
    queue = RunQueue(1, desc="test", poll_seconds=0.05)
    folder = tmp_path / "r"
    queue.add("r", folder, ["sh", "-c", f"grep SigIgn /proc/$$/status > {folder}/ign; echo '{{\"complete\": true}}' > {folder}/run.json"])
    assert queue.start().wait_all(timeout=60)["r"].startswith("complete")
    ignored = int((folder / "ign").read_text().split()[1], 16)
    assert ignored & (1 << 12 | 1 << 24) == 0, hex(ignored)


def test_a_timeline_queue_records_each_runs_span_for_the_report(tmp_path, monkeypatch):
    """RunQueue(timeline=True) is in harness.run_queue.TIMELINE_QUEUES and keeps each run's wall-clock start and end;
    the run recorder's timeline reads them (seconds from the session's start). Planted: a queue without the flag stays
    out; a run still going has no end."""
    import time

    from harness import run_queue
    from harness.results import RunRecorder

    monkeypatch.setattr(run_queue, "TIMELINE_QUEUES", [])
    recorder = RunRecorder(root=tmp_path / "reports")
    quiet = RunQueue(1, desc="scratch", poll_seconds=0.05)
    shown = RunQueue(2, desc="background", poll_seconds=0.05, timeline=True)
    assert run_queue.TIMELINE_QUEUES == [shown] and quiet.spans() == []
    record = json.dumps({"complete": True, "phases": {"load": 0.25, "train": 1.5}})
    shown.add("quick", tmp_path / "quick", [sys.executable, "-c", f"open({str(tmp_path / 'quick' / 'run.json')!r}, 'w')"
                                                                   f".write({record!r})"])
    shown.add("slow", tmp_path / "slow", [sys.executable, "-c", "import time; time.sleep(30)"])
    before = time.time()
    shown.start()
    shown.wait("quick", timeout=60)
    spans = {s["name"]: s for s in shown.spans()}
    assert before <= spans["quick"]["start"] <= spans["quick"]["end"] <= time.time()
    assert spans["quick"]["outcome"].startswith("complete in") and spans["quick"]["phases"] == {"load": 0.25, "train": 1.5}
    assert spans["slow"]["end"] is None and spans["slow"]["outcome"] is None
    runs = {r["name"]: r for r in recorder.timeline()["runs"]}
    assert runs["quick"]["queue"] == "background" and 0 <= runs["quick"]["start_s"] <= runs["quick"]["end_s"]
    assert runs["quick"]["phases"] == {"load": 0.25, "train": 1.5}  # the run record's, for the report's segments
    assert runs["slow"]["end_s"] is None and "phases" not in runs["slow"]
    shown.stop()
    assert {s["name"]: s["end"] is not None for s in shown.spans()} == {"quick": True, "slow": True}


def test_a_records_train_phase_is_split_where_its_first_steps_are_timed():
    """timeline_phases: "train" becomes "train: first N steps" (throughput.warmup_seconds) and the rest, in place, the
    sum kept; a record without the figure, or with one larger than the phase, keeps its phases as they are."""
    from harness.record_facts import timeline_phases as phases

    record = {"phases": {"load": 29.6, "train": 281.5, "evaluate": 211.0},
              "throughput": {"warmup_steps_excluded": 3, "warmup_seconds": 167.795}}
    split = phases(record)
    assert list(split) == ["load", "train: first 3 steps", "train", "evaluate"]
    assert split["train: first 3 steps"] == 167.795 and abs(split["train"] + 167.795 - 281.5) < 1e-6
    assert phases({"phases": {"train": 10.0}}) == {"train": 10.0}
    assert phases({"phases": {"train": 10.0}, "throughput": {"warmup_steps_excluded": 3, "warmup_seconds": 11.0}}) == {
        "train": 10.0}
    assert phases({"complete": True}) is None and phases([1, 2]) is None
    # what is not a number of seconds is left out, and a throughput that is not a table splits nothing
    assert phases({"phases": {"load": True, "tokenize": float("nan"), "train": 5.0}, "throughput": [1]}) == {"train": 5.0}


def test_runs_that_declare_their_cores_are_counted_while_they_run(tmp_path, monkeypatch):
    """RunQueue(cpu_threads=N) counts N cores for each of its runs between its start and its end
    (harness.run_queue.cpu_threads_held, which llama.cpp's children are sized by); a queue that declares nothing counts
    none. Planted: a run that never ends is counted until stop() kills it."""
    from harness import run_queue

    monkeypatch.setattr(run_queue, "CPU_QUEUES", [])
    undeclared = RunQueue(1, desc="scratch", poll_seconds=0.05)
    undeclared.add("busy", tmp_path / "busy", [sys.executable, "-c", "import time; time.sleep(30)"])
    undeclared.start()
    declared = RunQueue(2, desc="background", poll_seconds=0.05, cpu_threads=1)
    assert run_queue.CPU_QUEUES == [declared] and run_queue.cpu_threads_held() == 0
    declared.add("quick", tmp_path / "quick", _writes_run_json(tmp_path / "quick", sleep=0.5))
    declared.add("slow", tmp_path / "slow", [sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        declared.start()
        deadline = time.time() + 20
        while len(declared.started) < 2 and time.time() < deadline:
            time.sleep(0.02)
        held_while_both_ran = run_queue.cpu_threads_held()
        declared.wait("quick", timeout=20)
        assert held_while_both_ran in (1, 2)  # "quick" may be over before the count is read on a slow host
        assert run_queue.cpu_threads_held() == 1  # "slow" still runs; the undeclared queue's run is never counted
    finally:
        declared.stop()
        undeclared.stop()
    assert run_queue.cpu_threads_held() == 0
