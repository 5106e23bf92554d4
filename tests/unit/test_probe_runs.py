"""harness.probe_runs: the GPU tier's probes as background runs, on the CPU with fake probe modules."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import probe_runs
from harness.run_queue import RunQueue

ROOT = Path(__file__).resolve().parents[2]

FAKE = '''
import json, os, sys
print("a banner a library printed")
os.write(1, b"a line C code wrote to the descriptor\\n")
print("a warning on stderr", file=sys.stderr)
mode = sys.argv[1]
if mode == "fails":
    print("halfway")
    sys.exit(3)
if mode == "raises":
    raise RuntimeError("CUDA error: an illegal memory access")
if mode == "exits-with-text":
    sys.exit("no CUDA device: the probe needs a GPU")
if mode == "no-json":
    print("done, but no JSON")
    sys.exit(0)
print(json.dumps({"argv": sys.argv[1:], "env": os.environ.get("PROBE_ENV")}))
'''


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    (tmp_path / "fake_probe.py").write_text(FAKE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return "fake_probe"


def _run(folder: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.probe_runs", str(folder), module, *args],
                          capture_output=True, text=True, timeout=120)


def test_a_probe_run_keeps_the_json_of_its_last_line(tmp_path, fake_module):
    proc = _run(tmp_path / "p", fake_module, "ok", "--x", "1")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "p" / "run.json").read_text())
    assert record["complete"] is True and record["result"] == {"argv": ["ok", "--x", "1"], "env": None}
    assert record["probe"] == ["fake_probe", "ok", "--x", "1"] and record["seconds"] >= 0
    assert record["gpu_peak_reserved_mib"] is None  # no CUDA here
    printed = (tmp_path / "p" / "stdout.txt").read_text()
    assert "a banner a library printed" in printed and "a line C code wrote" in printed
    assert "a warning on stderr" in proc.stderr  # stderr stays the run's log


@pytest.mark.parametrize("mode, code, says", [("fails", 3, "exited 3; its last output:\n"),
                                             ("raises", 1, "RuntimeError: CUDA error"),
                                             ("exits-with-text", 1, "no CUDA device: the probe needs a GPU"),
                                             ("no-json", 1, "printed no JSON object on its last line")])
def test_a_failed_probe_writes_no_record_and_says_why(tmp_path, fake_module, mode, code, says):
    proc = _run(tmp_path / "p", fake_module, mode)
    assert proc.returncode == code and says in proc.stderr
    assert not (tmp_path / "p" / "run.json").exists()


def test_a_test_reads_its_probe_through_the_queue_or_gets_the_log_tail(tmp_path, fake_module):
    """The queue starts the probes; result() waits by name. A failed probe fails its test with the probe's own words,
    never with a missing file."""
    good, bad = probe_runs.Probe("good", fake_module, ["ok"], {"PROBE_ENV": "mine"}), probe_runs.Probe("bad", fake_module,
                                                                                                       ["fails"])
    queue = RunQueue(2, desc="test", poll_seconds=0.05)
    for probe in (good, bad):
        queue.add(probe.name, tmp_path / probe.name, probe_runs.command(probe, tmp_path / probe.name), env=probe.env)
    queue.start()
    assert probe_runs.result(queue, "good", tmp_path / "good", timeout=60) == {"argv": ["ok"], "env": "mine"}
    assert set(probe_runs.timing(tmp_path / "good")) == {"seconds", "gpu_peak_reserved_mib"}
    with pytest.raises(AssertionError, match=r"(?s)probe bad failed \(exit 3.*halfway"):
        probe_runs.result(queue, "bad", tmp_path / "bad", timeout=60)


def test_every_probe_a_gpu_test_names_exists_and_every_probe_is_read():
    """tests/gpu's uses_probes markers and the probe table name the same probes (a probe nobody reads costs the tier
    minutes; a name not in the table is a usage error before any GPU work)."""
    named = set()
    for path in (ROOT / "tests" / "gpu").glob("test_*.py"):
        for args in re.findall(r"uses_probes\(([^)]*)\)", path.read_text()):
            named |= set(re.findall(r'"([^"]+)"', args))
    table = probe_runs.probes(Path("perf"), Path("model"), Path("out"))
    assert named == set(table)
    with pytest.raises(ValueError, match="no such GPU probe"):
        probe_runs.selected(["checkpoint-4096-profile", "checkpoint-1024"])


def test_the_probes_commands_are_the_ones_the_tests_ran_before():
    table = probe_runs.probes(Path("/m/perf"), Path("/m/gemma"), Path("/out"))
    assert table["checkpoint-4096-profile"].args == ["checkpoint", "--model", "/m/perf", "--max-seq-length", "4096",
                                                     "--profile"]
    assert [table[f"checkpoint-{n}"].args[-1] for n in (256, 511, 512, 513)] == ["256", "511", "512", "513"]
    assert table["accumulation"].module == "harness.accumulation" and "/m/gemma" in table["accumulation"].args
    assert table["vram-False"].env == {"UNSLOTH_COMPILE_DISABLE": os.environ.get("UNSLOTH_COMPILE_DISABLE", "1")}
    assert list(table)[:2] == ["checkpoint-4096-profile", "accumulation"]  # the slowest first


@pytest.mark.parametrize("total_gib, at_once, reserve", [(140.4, 4, 44), (79.6, 2, 36)])
def test_the_probes_memory_reserve_leaves_the_fine_tunes_their_slots(monkeypatch, total_gib, at_once, reserve):
    """An H200: 4 probes at once, at most the no-checkpointing grid (32 GiB) and three of 4, so 13 fine-tunes of 6 GiB
    still fit beside the pytest process's 8; an 80 GiB H100: 2 at once (36 GiB), 5 fine-tunes."""
    monkeypatch.delenv("HARNESS_GPU_PROBES_AT_ONCE", raising=False)
    every = list(probe_runs.probes(Path("p"), Path("m"), Path("o")).values())
    assert probe_runs.at_once(total_gib) == at_once
    assert probe_runs.reserve_gib(every, at_once) == reserve
    assert int((total_gib - 8 - reserve) // 6) >= (13 if total_gib > 100 else 5)
    assert probe_runs.reserve_gib([], at_once) == 0
    monkeypatch.setenv("HARNESS_GPU_PROBES_AT_ONCE", "1")
    assert probe_runs.at_once(total_gib) == 1


def test_a_hung_probe_is_stopped_with_its_stack(tmp_path, fake_module):
    """A probe stuck (in CUDA, say) no longer holds the tier forever: past its timeout the run ends with every thread's
    stack in its log (the tests gave each probe 900 s, the grid 1500, when they ran them in the foreground)."""
    (tmp_path / "hangs.py").write_text("import time\ndef wait_forever():\n    time.sleep(60)\nwait_forever()\n")
    proc = subprocess.run([sys.executable, "-m", "harness.probe_runs", "--timeout", "1", str(tmp_path / "p"), "hangs"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Timeout" in proc.stderr and "wait_forever" in proc.stderr
    assert not (tmp_path / "p" / "run.json").exists()
    assert probe_runs.command(probe_runs.Probe("x", "m", ["a"], timeout=7), Path("f"))[3:7] == ["--timeout", "7", "f", "m"]
