"""The experiment claims are a GPU target of their own (`--experiments`; `certify --gpu` passes it): 50 fine-tunes are
over an hour on one H200, the rest of the GPU tier ~10 min. Without the option a CUDA run deselects them and says so
in results.json and in the report's Scope section; a CPU run keeps them, skipped for want of a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = '''
import os

import harness.pytest_plugin

if os.environ.get("FAKE_CUDA") == "1":  # what a GPU runner's collection sees; nothing here touches a GPU
    harness.pytest_plugin.cuda_available = lambda: True
'''

TESTS = '''
import pytest


@pytest.mark.experiments
@pytest.mark.claim("MASK-STABILITY")
def test_an_experiment():
    pass


@pytest.mark.claim("LORA-SCALING")
def test_another_claim(certify):
    certify("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": [2.0] * 7}, "tiny")
'''


def run(tmp_path: Path, name: str, *args: str, cuda: bool) -> tuple[subprocess.CompletedProcess, dict, str]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_scratch.py").write_text(TESTS)
    env = {**os.environ, "HARNESS_REPORTS": str(folder / "reports"), "FAKE_CUDA": "1" if cuda else "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # hypothesis's plugin left out: these scratch tests use none, and it costs ~0.6 s of each run's ~1.2 s
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                           "-p", "harness.pytest_plugin", "--rootdir", str(folder), "-c", os.devnull, *args, "test_scratch.py"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    latest = folder / "reports" / "latest"
    return proc, json.loads((latest / "results.json").read_text()), (latest / "index.html").read_text()


@pytest.mark.parametrize("option", [[], ["--experiments"]], ids=["without", "with"])
def test_a_gpu_run_runs_the_experiments_only_when_asked(tmp_path, option):
    proc, data, html = run(tmp_path, "run", *option, cuda=True)
    claims = {c["id"]: c for c in data["claims"]}
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert claims["LORA-SCALING"]["verdict"] == "corrected"
    if option:
        assert "2 passed" in proc.stdout and "experiments_not_run" not in data["extras"]
        assert claims["MASK-STABILITY"]["tests"] == ["test_scratch.py::test_an_experiment"]
    else:
        assert "1 passed, 1 deselected" in proc.stdout
        assert data["extras"]["experiments_not_run"]["claims"] == ["MASK-STABILITY"]
        assert claims["MASK-STABILITY"]["verdict"] == "skip" and not claims["MASK-STABILITY"]["regression"]
        assert claims["MASK-STABILITY"]["reason"].startswith("not run in this session: the experiment claims are a GPU")
        assert "The experiment claims MASK-STABILITY were not run here" in html


def test_a_cpu_run_keeps_them_to_skip_for_want_of_a_gpu(tmp_path):
    proc, data, html = run(tmp_path, "cpu", cuda=False)
    assert proc.returncode == 0 and "2 passed" in proc.stdout  # no gpu marker here: nothing skips it
    assert "experiments_not_run" not in data["extras"] and "experiment claims" not in html


def test_a_selection_that_leaves_them_out_anyway_records_no_scope_line(tmp_path):
    """-k/-m run first: a run that did not select the experiment tests does not say it left them out for being
    experiments (the deselection hook is trylast)."""
    proc, data, html = run(tmp_path, "k", "-k", "another", cuda=True)
    assert proc.returncode == 0 and "experiments_not_run" not in data["extras"]
    assert not {c["id"]: c for c in data["claims"]}["MASK-STABILITY"]["reason"].startswith("not run in this session: the")


def test_no_experiments_without_gpu_is_a_usage_error(capsys):
    from harness.cli import main

    assert main(["certify", "--no-experiments"]) == 3
    assert "--no-experiments goes with --gpu" in capsys.readouterr().err
