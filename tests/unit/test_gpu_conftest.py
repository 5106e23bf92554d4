"""tests/gpu/conftest.py's session fixtures run on the CPU with fake probes: every GPU test skips here, so without this
nothing on the CPU executes them (a8f135d cut two of its helpers and every GPU test errored in setup with NameError on
the first H200 run, reports/examples/h200-2026-11-29-probe-queue-smoke)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = '''
import importlib.util
import sys
from pathlib import Path

import pytest

from harness import probe_runs

spec = importlib.util.spec_from_file_location("gpu_conftest", {gpu_conftest!r})
gpu_conftest = importlib.util.module_from_spec(spec)
sys.modules["gpu_conftest"] = gpu_conftest
spec.loader.exec_module(gpu_conftest)
gpu_runs, gpu_probes, step_servers = gpu_conftest.gpu_runs, gpu_conftest.gpu_probes, gpu_conftest.step_servers

from harness import step_client

EVENTS = []


class FakeStepServer:
    """No process: records what the fixture asks of it, in order."""

    def __init__(self, backend, model, hold=False):
        self.backend, self.model, self.hold, self.warm_seconds = backend, model, hold, None
        EVENTS.append(("start", backend, hold))

    def warm(self):
        EVENTS.append(("warm", self.backend))

    def wait_ready(self):
        EVENTS.append(("ready", self.backend))

    def kill(self):
        EVENTS.append(("kill", self.backend))


step_client.StepServer = FakeStepServer

from harness import run_queue

ADDED = []
_add = run_queue.RunQueue.add


def recording_add(self, name, folder, cmd, env=None):
    ADDED.append((name, Path(folder), list(cmd)))
    return _add(self, name, folder, cmd, env)


run_queue.RunQueue.add = recording_add
_start = run_queue.RunQueue.start


def recording_start(self):
    EVENTS.append(("queue started", self.desc))
    return _start(self)


run_queue.RunQueue.start = recording_start


@pytest.fixture
def added():
    return ADDED


@pytest.fixture
def events():
    return EVENTS

real_probes = probe_runs.probes


def fake_probes(perf_model, model, out_root):
    """The real table's names, each running fake_probe (no GPU here)."""
    return {{name: probe_runs.Probe(name, "fake_probe", [name, str(perf_model), str(model)])
            for name in real_probes(perf_model, model, out_root)}}


probe_runs.probes = fake_probes


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory):
    EVENTS.append(("gemma_dir",))
    return tmp_path_factory.mktemp("gemma")
'''

FAKE_PROBE = '''
import json, sys
print(json.dumps({"probe": sys.argv[1], "perf_model": sys.argv[2], "model": sys.argv[3]}))
'''

TESTS = '''
import pytest


@pytest.mark.uses_probes("checkpoint-511", "accumulation")
def test_reads_its_probes(gpu_runs, gpu_probes):
    assert gpu_runs.experiment_runs == []
    assert gpu_probes.result("checkpoint-511")["probe"] == "checkpoint-511"
    found = gpu_probes.result("accumulation")
    assert found["perf_model"] == found["model"]  # no HARNESS_PERF_MODEL: the session's model
    with pytest.raises(KeyError, match="was not queued"):
        gpu_probes.result("vram-False")


def test_without_probes(gpu_probes):
    # queued in the table's order (the slowest first), not in the order the tests name them
    assert list(gpu_probes.folders) == ["accumulation", "checkpoint-511"]


@pytest.mark.step_timing
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_step_time(backend, step_servers, events):
    server = step_servers.ready(backend)
    assert (server.backend, server.model) == (backend, "gemma3-270m")
    # both started held at session start; both warmed (after the reference run, complete already here) before either
    # is timed
    servers = [e for e in events if e[0] in ("start", "warm", "ready", "kill")]  # (the queues' and the model's too)
    assert servers[:2] == [("start", "hf", True), ("start", "unsloth", True)]
    assert {("warm", "hf"), ("warm", "unsloth"), ("ready", "hf"), ("ready", "unsloth")} <= set(events)
    assert ("kill", backend) not in events
    assert step_servers.warmed_beside == "after the reference run, beside its GGUF checks"


@pytest.mark.parametrize("backend", ["other"])
def test_a_test_parametrized_by_backend_starts_no_server(backend, events):
    assert ("start", "other", True) not in events


@pytest.mark.uses_runs("e2e")
def test_the_reference_run_and_its_base_evaluation_are_queued_apart_and_merged(gpu_runs, added, events):
    import importlib.util
    import json
    import os

    queued = {name: (folder, cmd) for name, folder, cmd in added}
    assert "--no-base-eval" in queued["e2e"][1] and "--base-eval-only" not in queued["e2e"][1]
    # the runs get the embedded model's name and resolve it themselves: they start before this process materializes
    # it (tests/gpu/conftest.py model_for_the_runs), which it then does for its own tests
    for name in ("e2e", "e2e-base"):
        assert queued[name][1][queued[name][1].index("--model") + 1] == "gemma3-270m"
    assert events.index(("queue started", "GPU tier fine-tunes")) < events.index(("gemma_dir",))
    assert "--base-eval-only" in queued["e2e-base"][1] and queued["e2e-base"][0] == gpu_runs.e2e_dir / "base-eval"
    spec = importlib.util.spec_from_file_location("tier", os.environ["GPU_TIER_TESTS"])
    tier = importlib.util.module_from_spec(spec)  # the GPU test's fixture helper: waits, then record_facts merges
    spec.loader.exec_module(tier)
    record = json.loads((gpu_runs.e2e_dir / "run.json").read_text())
    assert gpu_runs.base_eval_apart  # two slots here, and the reused reference record has no base score yet
    merged = tier.with_base_eval(record, gpu_runs)
    assert merged["base_eval"]["exact_match"] == 0.0 and merged["base_eval_run"]["phases"] == {"evaluate_base": 9.0}
    assert json.loads((gpu_runs.e2e_dir / "run.json").read_text()) == merged  # written back whole
    # both runs get the same recipe values (a shortened HARNESS_E2E_STEPS run once differed in max_steps)
    assert queued["e2e"][1][queued["e2e"][1].index("--max-steps") + 1] == "600"
    assert queued["e2e-base"][1][queued["e2e-base"][1].index("--max-steps") + 1] == "600"
    assert (gpu_runs.e2e_dir / "outputs-base.jsonl").read_text() == '{"id": 1}\\n'  # where the record's name points
    other = {**record, "recipe": {"r": 16}}
    with pytest.raises(AssertionError, match="another setup"):
        tier.with_base_eval(other, gpu_runs)
    import sys

    assert sys.modules["gpu_conftest"]._has_base_eval(gpu_runs.e2e_dir)  # a later session reusing this folder queues no base run
'''


def test_the_gpu_session_fixtures_run_and_their_tests_read_the_probes(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST.format(gpu_conftest=str(ROOT / "tests" / "gpu" / "conftest.py")))
    (tmp_path / "fake_probe.py").write_text(FAKE_PROBE)
    (tmp_path / "test_reads.py").write_text(TESTS)
    env = {**os.environ, "HARNESS_GPU_PARALLEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HARNESS_PERF_MODEL", None)
    env.pop("HARNESS_MODEL", None)  # the session's model is the embedded default here (the runs get its name)
    # the reference run and its base evaluation, complete already (no process starts): what the tier's test reads
    e2e = tmp_path / "e2e"
    (e2e / "base-eval").mkdir(parents=True)
    recipe = {"r": 32}
    (e2e / "run.json").write_text(json.dumps({"complete": True, "model": "gemma3-270m", "recipe": recipe}))
    (e2e / "base-eval" / "run.json").write_text(json.dumps({
        "complete": True, "model": "gemma3-270m", "recipe": recipe, "phases": {"evaluate_base": 9.0},
        "base_eval": {"exact_match": 0.0, "outputs_file": "outputs-base.jsonl"}}))
    (e2e / "base-eval" / "outputs-base.jsonl").write_text('{"id": 1}\n')
    env.update(HARNESS_E2E_OUT=str(e2e), GPU_TIER_TESTS=str(ROOT / "tests" / "gpu" / "test_unsloth_tier.py"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-report",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout
