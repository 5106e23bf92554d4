"""Another repository uses the claims plugin: the installed entry point gives it the marker, `certify` and a report."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_TEST = '''
import pytest


@pytest.mark.claim("LORA-SCALING")
def test_my_adapter_scaling(certify):
    certify("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": [2.0] * 7}, "tiny")


@pytest.mark.claim("LORA-RANK")
def test_my_ranks(certify):
    adapters = [{"name": f"layers.0.{m}", "a_shape": (16, 64), "b_shape": (64, 16), "in_features": 64, "out_features": 64}
                for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    certify("LORA-RANK", {"r": 16, "adapters": adapters}, "tiny")  # rank 16 where the handbook's recipe has 32


def test_that_takes_a_second():
    import time

    time.sleep(1.05)  # past harness.results.TIMELINE_MIN_SECONDS: in the timeline


@pytest.mark.claim("LORA-INIT")
def test_my_init_then_a_later_check(certify):
    certify("LORA-INIT", {"b_max_abs": 0.0, "logits_max_abs_diff": 0.0, "modules": 7}, "tiny")
    assert 1 + 1 == 3, "a check after certify failed"
'''


def test_a_scratch_repository_gets_marker_certify_and_results(tmp_path):
    entry_points = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    if "harness.pytest_plugin" not in entry_points:
        pytest.skip("handbook-suite is not pip-installed here (no pytest11 entry point): pip install -e .")
    (tmp_path / "test_mine.py").write_text(USER_TEST)
    env = {**os.environ, "HARNESS_REPORTS": str(tmp_path / "reports")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-1500:]  # the rank-16 adapter is a regression of LORA-RANK
    assert "REGRESSIONS: LORA-RANK, LORA-INIT" in proc.stdout
    data = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert data["complete"] and claims["LORA-SCALING"]["verdict"] == "corrected"
    assert claims["LORA-RANK"]["regression"] and "ranks == [32] (observed [16])" in claims["LORA-RANK"]["violations"][0]
    assert claims["LORA-RANK"]["tests"] == ["test_mine.py::test_my_ranks"]
    # certify recorded LORA-INIT as pass, then an assertion of the same test failed: the claim is red
    assert claims["LORA-INIT"]["verdict"] == "fail" and claims["LORA-INIT"]["regression"]
    assert "a check after certify failed" in claims["LORA-INIT"]["reason"]
    assert set(data["durations"]) == {"test_mine.py::test_my_adapter_scaling", "test_mine.py::test_my_ranks",
                                      "test_mine.py::test_that_takes_a_second",
                                      "test_mine.py::test_my_init_then_a_later_check"}
    # when it ran, from setup's start to teardown's end, in seconds from the session's start; < 1 s tests left out
    (start, stop), = data["timeline"]["tests"].values()
    assert list(data["timeline"]["tests"]) == ["test_mine.py::test_that_takes_a_second"]
    # each end is rounded to 0.1 s: a span of 1.05 s can read 0.95 (2.3 - 1.3 is 0.9999… in floats: CI, 2026-11-29)
    assert 0 <= start and 0.95 - 1e-9 <= stop - start <= data["timeline"]["written_s"]
    assert data["timeline"]["runs"] == []
    # provenance: no checkout here, so no commit, but the digest of the code that ran
    assert data["environment"]["git_commit"] is None or len(data["environment"]["git_commit"]) == 12
    assert len(data["environment"]["source_digest"]) == 16
    page = (tmp_path / "reports" / "latest" / "index.html").read_text()
    assert "Where the time went" in page and "<h3>Timeline</h3>" in page and "test_that_takes_a_second" in page


BROKEN_SETUP = '''
import pytest


@pytest.fixture
def probe():
    return helper_the_edit_removed()  # a NameError in the suite's own setup (the H200's first probe-queue run)


@pytest.mark.claim("GC-FALLBACK-BOUNDARY")
def test_reads_a_probe(probe, certify):
    certify("GC-FALLBACK-BOUNDARY", probe, "gpu")


@pytest.mark.claim("LORA-RANK")
def test_my_ranks(certify):
    adapters = [{"name": f"layers.0.{m}", "a_shape": (16, 64), "b_shape": (64, 16), "in_features": 64, "out_features": 64}
                for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    certify("LORA-RANK", {"r": 16, "adapters": adapters}, "tiny")


@pytest.mark.claim("LORA-SCALING", "LORA-INIT")
def test_certifies_one_claim_then_errors(certify):
    certify("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": [2.0] * 7}, "tiny")  # as recorded
    raise RuntimeError("the next reading raised")  # before LORA-INIT was measured
'''


def test_a_test_that_errors_is_red_and_told_apart_from_evidence_that_moved(tmp_path):
    """Both are regressions (exit 1, never green); the banner, the terminal and the claim say which claims' evidence
    moved and which are red only because a test bound to them failed otherwise (session 14's NameError read as
    'Regressions found'), whether the test measured some of its claims first or none."""
    from harness.report import status
    from harness.results import certify_exit_code, regression_split

    (tmp_path / "test_broken.py").write_text(BROKEN_SETUP)
    env = {**os.environ, "HARNESS_REPORTS": str(tmp_path / "reports"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                           "-p", "harness.pytest_plugin", "--rootdir", str(tmp_path), "-c", os.devnull, "test_broken.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    data = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert proc.returncode == 1 and certify_exit_code(proc.returncode, data) == 1
    boundary = claims["GC-FALLBACK-BOUNDARY"]
    assert (boundary["verdict"], boundary["regression"], boundary["red_by_test_failure"]) == ("fail", True, True)
    assert "NameError" in boundary["reason"] and boundary["evidence"] == {}
    assert claims["LORA-RANK"]["regression"] and "red_by_test_failure" not in claims["LORA-RANK"]
    # measured as recorded, then its test raised: red, but not "evidence moved"
    scaling = claims["LORA-SCALING"]
    assert scaling["regression"] and scaling["red_by_test_failure"] and scaling["evidence"]
    assert claims["LORA-INIT"]["red_by_test_failure"] and "the next reading raised" in claims["LORA-INIT"]["reason"]
    assert regression_split(data) == (["LORA-RANK"], ["LORA-SCALING", "LORA-INIT", "GC-FALLBACK-BOUNDARY"])
    kind, headline = status(data)
    assert kind == "regressions" and "1 claim(s) left their recorded evidence (LORA-RANK)" in headline
    assert "3 claim(s) red because a test bound to them failed" in headline
    assert "3 claim(s) red because a test bound to them failed" in proc.stdout


@pytest.mark.parametrize("platform, nodes, torch_loaded, environ, expected", [
    ("linux", set(), False, {}, True),  # this CPU machine: no device node, torch not asked
    ("linux", {"/dev/nvidiactl"}, False, {}, False),  # NVIDIA's driver: ask torch
    ("linux", {"/proc/driver/nvidia"}, False, {}, False),  # a host whose /dev nodes are not made yet
    ("linux", {"/dev/dxg"}, False, {}, False),  # WSL 2
    ("linux", {"/dev/kfd"}, False, {}, False),  # ROCm
    ("linux", {"/dev/nvhost-ctrl"}, False, {}, False),  # Jetson
    ("linux", set(), False, {"NVIDIA_VISIBLE_DEVICES": "all"}, False),  # NVIDIA's container runtime names devices
    ("linux", set(), False, {"NVIDIA_VISIBLE_DEVICES": "void"}, True),
    ("linux", set(), True, {}, False),  # torch loaded already: asking it costs nothing
    ("darwin", set(), False, {}, False),  # no device nodes to read: ask torch
])
def test_no_gpu_is_known_without_torch_only_where_no_gpu_device_node_exists(platform, nodes, torch_loaded, environ,
                                                                            expected):
    """cuda_available() and the report's environment skip importing torch (~1 s of each pytest process) only where
    no CUDA or ROCm device could exist; a wrong True here would skip every GPU test of a GPU runner."""
    from harness import results

    modules = {"torch": object()} if torch_loaded else {}
    assert results.no_gpu_possible(modules, nodes.__contains__, platform, environ) is expected


class _Torch:
    """A stand-in for torch in sys.modules: says whether it was asked."""

    def __init__(self, available):
        self.asked, self.cuda = [], self
        self.available = available

    def is_available(self):
        self.asked.append(True)
        return self.available


@pytest.mark.parametrize("possible", [True, False])
def test_cuda_available_asks_torch_unless_no_gpu_is_possible(monkeypatch, possible):
    from harness import pytest_plugin, results

    torch = _Torch(available=True)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(results, "no_gpu_possible", lambda: not possible)
    assert pytest_plugin.cuda_available() is possible
    assert torch.asked == ([True] if possible else [])
    if not possible:  # the report's environment does not ask either: no GPU in its header, as torch would say
        assert results.environment()["gpu"] is None and torch.asked == []


def test_where_the_shortcut_says_no_gpu_torch_agrees():
    """On the machine running this: where no GPU device node exists (the shortcut's condition), torch sees no CUDA
    device either."""
    import os

    from harness import results

    if not sys.platform.startswith("linux") or any(os.path.exists(n) for n in results.GPU_DEVICE_NODES):
        pytest.skip("a GPU device node exists here (or not Linux): the shortcut is not taken")
    import torch

    assert not torch.cuda.is_available()


UNBOUND_SKIPS = '''
import pytest


def test_an_instruments_check_whose_reader_is_missing():
    pytest.skip("environment problem: unsloth_zoo: not installed — fix: pip install unsloth_zoo")


@pytest.mark.claim("LORA-SCALING")
def test_my_adapter_scaling(certify):
    certify("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": [2.0] * 7}, "tiny")
'''


@pytest.mark.parametrize("leg", [None, "canary"])
def test_a_check_bound_to_no_claim_that_could_not_run_is_never_silent(tmp_path, leg):
    """A test with no claim marker skipped for an environment problem: the run records it (certify's exit 2, the
    banner) where it once read "Certified"; inside a version leg a leg-pinned reader's skip fails it, as a claim's
    test does (leg_breakage ran for claim-bound tests only)."""
    from harness.results import certify_exit_code

    entry_points = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    if "harness.pytest_plugin" not in entry_points:
        pytest.skip("handbook-suite is not pip-installed here (no pytest11 entry point): pip install -e .")
    (tmp_path / "test_mine.py").write_text(UNBOUND_SKIPS)
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_LEG"}
    env.update(HARNESS_REPORTS=str(tmp_path / "reports"), **({"HARNESS_LEG": leg} if leg else {}))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                           "test_mine.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    data = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    if leg:
        assert proc.returncode == 1 and "version leg 'canary'" in proc.stdout, proc.stdout[-1500:]
        return
    assert proc.returncode == 0, proc.stdout[-1500:]
    assert data["environment_problems"] == [{
        "reason": "environment problem: unsloth_zoo: not installed — fix: pip install unsloth_zoo", "claims": [],
        "tests": ["test_mine.py::test_an_instruments_check_whose_reader_is_missing"]}]
    assert certify_exit_code(proc.returncode, data) == 2
    assert "ENVIRONMENT PROBLEM (not a regression; test_mine.py::test_an_instruments_check" in proc.stdout
    page = (tmp_path / "reports" / "latest" / "index.html").read_text()
    assert "1 check(s) of the suite&#x27;s instruments could not run here" in page


def test_an_empty_harness_model_is_the_embedded_default(monkeypatch):
    """$HARNESS_MODEL="" (a CI template's empty input) means the default, not the folder ".": it stopped every session
    once gemma_dir refused models that do not resolve."""
    from harness import pytest_plugin

    seen = {}

    class Group:
        def addoption(self, name, **kwargs):
            seen[name] = kwargs.get("default")

    monkeypatch.setenv("HARNESS_MODEL", "")
    pytest_plugin.pytest_addoption(type("Parser", (), {"getgroup": lambda self, *a: Group()})())
    assert seen["--model"] == "gemma3-270m"
