"""tests/gpu/conftest.py's session fixtures run on the CPU with fake probes: every GPU test skips here, so without this
nothing on the CPU executes them (a8f135d cut two of its helpers and every GPU test errored in setup with NameError on
the first H200 run, reports/examples/h200-2026-11-29-probe-queue-smoke)."""

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
    assert gpu_runs.e2e_dir is None and gpu_runs.experiment_runs == []
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
    # both started held at session start; both warmed (no reference run queued here: at once) before either is timed
    assert events[:2] == [("start", "hf", True), ("start", "unsloth", True)]
    assert {("warm", "hf"), ("warm", "unsloth"), ("ready", "hf"), ("ready", "unsloth")} <= set(events)
    assert ("kill", backend) not in events
    assert step_servers.warmed_beside == "at session start, beside the probes and the in-process tests"


@pytest.mark.parametrize("backend", ["other"])
def test_a_test_parametrized_by_backend_starts_no_server(backend, events):
    assert ("start", "other", True) not in events
'''


def test_the_gpu_session_fixtures_run_and_their_tests_read_the_probes(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST.format(gpu_conftest=str(ROOT / "tests" / "gpu" / "conftest.py")))
    (tmp_path / "fake_probe.py").write_text(FAKE_PROBE)
    (tmp_path / "test_reads.py").write_text(TESTS)
    env = {**os.environ, "HARNESS_GPU_PARALLEL": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HARNESS_PERF_MODEL", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-report",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "5 passed" in proc.stdout
