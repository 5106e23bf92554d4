"""A crashing or missing reader is an environment problem (skip with cause and fix), never a regression;
a healthy reader that fails on an exported file still blames the file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import doctor
from harness.results import certify_exit_code

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for llama-cpp-python: SIGSEGV in Llama() on every file ("all", a broken build) or on every file
# but Google's reference GGUF ("exports", a healthy build reading a broken export).
FAKE_LLAMA_CPP = '''
import os, signal

class Llama:
    def __init__(self, model_path, **kwargs):
        mode = os.environ.get("FAKE_LLAMA_CRASH", "all")
        if mode == "all" or not model_path.endswith("gemma-3-270m-q4_k_m.gguf"):
            os.kill(os.getpid(), signal.SIGSEGV)

    def tokenize(self, text, add_bos=False, special=True):
        return [818, 5279, 529, 7001, 563]

    def reset(self):
        pass

    def generate(self, ids, **kwargs):
        while True:
            yield 506
'''


@pytest.fixture
def fake_llama_cpp(tmp_path, monkeypatch):
    """Put the fake reader first on the path of this process and of its children; forget cached health."""
    package = tmp_path / "fake" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_LLAMA_CPP)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package.parent), str(ROOT)]))
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    doctor.llama_cpp.cache_clear()
    yield package.parent
    doctor.llama_cpp.cache_clear()


def test_probe_ids_are_the_tokenizers(tokenizer):
    """The doctor's fixed probe ids are what the faithful Gemma 3 tokenizer gives (and llama.cpp must give)."""
    assert tokenizer.encode(doctor.PROBE_TEXT, add_special_tokens=False) == doctor.PROBE_IDS


def test_crashing_reader_is_an_environment_problem_with_the_fix(fake_llama_cpp, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_CRASH", "all")
    health = doctor.llama_cpp()
    assert health.ok is False
    assert "crashed (signal 11)" in health.detail and "Google's own" in health.detail
    assert "python -m harness.llama_cpp_build" in health.fix
    assert doctor.is_environment_problem(health.skip_reason())
    with pytest.raises(doctor.EnvironmentProblem):
        doctor.require_llama_cpp()


def test_missing_reader_is_an_environment_problem(monkeypatch):
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    doctor.llama_cpp.cache_clear()
    try:
        health = doctor.llama_cpp()
    finally:
        doctor.llama_cpp.cache_clear()
    assert (health.ok, health.detail) == (False, "llama-cpp-python is not installed")
    assert "install.sh" in health.fix


def test_healthy_reader_failing_on_an_export_blames_the_file(fake_llama_cpp, monkeypatch, tmp_path):
    """The reader decodes Google's GGUF, then crashes on ours: that is the file's fault (a regression), not the machine's."""
    from harness.gguf_verify import GGUFVerifyError, llama_outputs

    monkeypatch.setenv("FAKE_LLAMA_CRASH", "exports")
    assert doctor.llama_cpp().ok is True
    export = tmp_path / "export.gguf"
    export.write_bytes(b"GGUF")
    with pytest.raises(GGUFVerifyError, match="the file is at fault"):
        llama_outputs(export, ["a"], [[2]], set(), 2)


def test_crashing_reader_skips_its_claims_and_the_report_says_environment_problem(fake_llama_cpp, monkeypatch, tmp_path):
    """The real GGUF-LLAMACPP test with a reader that segfaults: skip + 'environment problem', pytest green, certify 2."""
    monkeypatch.setenv("FAKE_LLAMA_CRASH", "all")
    env = {**os.environ, "HARNESS_REPORTS": str(tmp_path / "reports")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/claims/test_gguf.py::test_llamacpp_reads_the_export_like_transformers"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "ENVIRONMENT PROBLEM" in proc.stdout
    data = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    claim = next(c for c in data["claims"] if c["id"] == "GGUF-LLAMACPP")
    assert (claim["verdict"], claim["regression"]) == ("skip", False)
    assert "crashed (signal 11)" in claim["environment_problem"]
    assert data["environment_problems"][0]["claims"] == ["GGUF-LLAMACPP"]
    assert "Environment problem — not a regression" in (tmp_path / "reports" / "latest" / "index.html").read_text()
    assert certify_exit_code(proc.returncode, data) == 2


def test_environment_problem_raised_inside_a_test_becomes_a_skip():
    """The plugin's safety net: an EnvironmentProblem raised by a test body is reported as a skip with its reason."""
    problem = doctor.EnvironmentProblem(doctor.Health("llama.cpp", False, "crashed (signal 11)", "rebuild"))
    excinfo = SimpleNamespace(errisinstance=lambda cls: isinstance(problem, cls), value=problem)
    report = SimpleNamespace(outcome="failed", longrepr="traceback")
    item = SimpleNamespace(path=Path("t.py"), location=("t.py", 3, "test"))
    doctor.environment_problem_as_skip(item, SimpleNamespace(excinfo=excinfo), report)
    assert report.outcome == "skipped"
    assert report.longrepr[2].startswith("Skipped: environment problem: llama.cpp: crashed (signal 11)")


@pytest.mark.parametrize("pytest_code, regression, problems, complete, expected", [
    (0, False, [], True, 0), (1, True, [], True, 1), (0, False, [{"reason": "x", "claims": ["A"]}], True, 2),
    (1, True, [{"reason": "x", "claims": ["A"]}], True, 1), (1, False, [], True, 1), (2, False, [], False, 3),
    (5, False, [], True, 3), (0, False, [], False, 3)])
def test_certify_exit_code_tells_the_outcomes_apart(pytest_code, regression, problems, complete, expected):
    data = {"complete": complete, "claims": [{"id": "A", "regression": regression}], "environment_problems": problems}
    assert certify_exit_code(pytest_code, data) == expected


def test_loading_a_file_with_a_crashing_reader_is_an_environment_problem(fake_llama_cpp, monkeypatch, tmp_path):
    """llamacpp_loads (the GPU tier's check of both exporters' files) consults the same health check."""
    from harness.gguf_verify import llamacpp_loads

    monkeypatch.setenv("FAKE_LLAMA_CRASH", "all")
    export = tmp_path / "export.gguf"
    export.write_bytes(b"GGUF")
    with pytest.raises(doctor.EnvironmentProblem, match="crashed \\(signal 11\\)"):
        llamacpp_loads(export)
    monkeypatch.setenv("FAKE_LLAMA_CRASH", "exports")
    doctor.llama_cpp.cache_clear()
    ok, why = llamacpp_loads(export)
    assert (ok, "export.gguf" in why) == (False, True)


# A stand-in for the llama.cpp child (python -m harness.gguf_verify): the job's "path" says what it does.
FAKE_LLAMA_CHILD = '''
import json, os, signal, sys, time
job = json.load(sys.stdin)
if job["path"] == "hang":
    time.sleep(60)
elif job["path"] in ("sigkill", "sigsegv"):
    os.kill(os.getpid(), getattr(signal, job["path"].upper()))
elif job["path"] == "silent":
    sys.exit(0)
print(json.dumps({"greedy": job["prompt_ids"]}))
'''


@pytest.fixture
def fake_llama_children(monkeypatch):
    """llama_children starts the fake child instead of llama.cpp's; every child it starts is recorded."""
    from harness import gguf_verify, llama_text

    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    fake = [sys.executable, "-I", "-c", FAKE_LLAMA_CHILD]
    monkeypatch.setattr(gguf_verify, "_child_command", lambda: fake)
    # harness.llama_text's child: the same fake, told apart by its last argument (which child a job went to)
    monkeypatch.setattr(llama_text, "child_command", lambda: [*fake, "llama_text"])
    monkeypatch.setattr(subprocess, "Popen", Recorded)
    return started


def _jobs(*paths):
    from harness.gguf_verify import _job

    return [_job(Path(p), [], [[i]], set(), 1, True) for i, p in enumerate(paths)]


def _load(monkeypatch, per_core: float, cores: int = 2):
    from harness import gguf_verify

    monkeypatch.setattr(gguf_verify, "host_load", lambda: (per_core * cores, cores))


def test_llama_children_past_the_deadline_on_a_starved_host_are_the_hosts_and_none_outlives_it(fake_llama_children,
                                                                                               monkeypatch):
    from harness.gguf_verify import llama_children

    _load(monkeypatch, 5.0)
    started = time.monotonic()
    with pytest.raises(doctor.EnvironmentProblem, match=r"llama.cpp reading hang did not finish within 1 s \(load "
                                                         r"average 10.0 on 2 cores\): the runner is overloaded"):
        llama_children(_jobs("hang", "ok", "hang"), timeout=1)
    assert time.monotonic() - started < 5
    assert [p.returncode for p in fake_llama_children] == [-signal.SIGKILL, 0, -signal.SIGKILL]  # killed and reaped


def test_a_llama_child_past_the_deadline_on_a_calm_host_blames_the_file(fake_llama_children, monkeypatch):
    """A file that makes a healthy llama.cpp run without end is the file's fault, never a skip (a guard that sleeps)."""
    from harness.gguf_verify import GGUFVerifyError, llama_children

    _load(monkeypatch, 0.5)
    monkeypatch.setattr(doctor, "require_llama_cpp", lambda: None)
    with pytest.raises(GGUFVerifyError, match=r"did not finish within 1 s on a host that is not starved \(load average "
                                              r"1.0 on 2 cores\) reading hang, .* the file is at fault"):
        llama_children(_jobs("hang", "ok"), timeout=1)


def test_a_llama_child_killed_by_signal_9_on_a_starved_host_is_the_hosts_and_its_siblings_are_killed(
        fake_llama_children, monkeypatch):
    from harness.gguf_verify import llama_children

    _load(monkeypatch, 3.0)
    started = time.monotonic()
    with pytest.raises(doctor.EnvironmentProblem, match=r"llama.cpp reading sigkill was killed \(signal 9\)"):
        llama_children(_jobs("hang", "sigkill"), timeout=60)
    assert time.monotonic() - started < 5  # the verdict did not wait for the hung sibling
    assert [p.returncode for p in fake_llama_children] == [-signal.SIGKILL, -signal.SIGKILL]


def test_a_llama_child_killed_by_signal_9_on_a_calm_host_blames_the_file(fake_llama_children, monkeypatch):
    from harness.gguf_verify import GGUFVerifyError, llama_children

    _load(monkeypatch, 0.5)
    monkeypatch.setattr(doctor, "require_llama_cpp", lambda: None)
    with pytest.raises(GGUFVerifyError, match=r"was killed \(signal 9\) on a host that is not starved"):
        llama_children(_jobs("sigkill"), timeout=60)


def test_a_llama_child_with_no_output_is_a_failure(fake_llama_children, monkeypatch):
    from harness.gguf_verify import GGUFVerifyError, llama_children

    monkeypatch.setattr(doctor, "require_llama_cpp", lambda: None)
    with pytest.raises(GGUFVerifyError, match=r"llama.cpp wrote no output reading silent"):
        llama_children(_jobs("ok", "silent"), timeout=60)


def test_a_llama_child_crashing_with_a_healthy_reader_blames_the_file(fake_llama_children, monkeypatch):
    """Any other failure consults the reader's health first (here healthy), after the siblings are gone."""
    from harness.gguf_verify import GGUFVerifyError, llama_children

    siblings_alive = []
    monkeypatch.setattr(doctor, "require_llama_cpp",
                        lambda: siblings_alive.append([p.returncode is None for p in fake_llama_children]))
    with pytest.raises(GGUFVerifyError, match=r"llama.cpp crashed \(signal 11\) reading sigsegv, .* the file is at "
                                              r"fault; check it alone with python -m harness verify-gguf sigsegv"):
        llama_children(_jobs("hang", "sigsegv"), timeout=60)
    assert siblings_alive == [[False, False]]


def test_llama_children_return_each_jobs_outputs_in_order(fake_llama_children):
    from harness.gguf_verify import llama_children

    assert llama_children(_jobs("ok", "ok", "ok"), timeout=60) == [{"greedy": [[0]]}, {"greedy": [[1]]},
                                                                    {"greedy": [[2]]}]


@pytest.mark.parametrize("path, load_per_core, raised, message", [
    ("hang", 0.5, "GGUFVerifyError", r"did not finish within 1 s on a host that is not starved .* the file is at fault"),
    ("hang", 5.0, "EnvironmentProblem", r"did not finish within 1 s .*the runner is overloaded"),
    ("sigsegv", 0.5, "GGUFVerifyError", r"crashed \(signal 11\) reading \(prompt_and_stop\) sigsegv"),
])
def test_the_text_prompt_child_is_judged_like_every_llama_child(fake_llama_children, monkeypatch, path, load_per_core,
                                                                 raised, message):
    """harness.llama_text (GGUF-PROMPT-TEXT, GGUF-EOS, GGUF-SLIDING-WINDOW) once let a timeout escape as
    subprocess.TimeoutExpired; its child now goes through llama_children's rule."""
    from harness import gguf_verify
    from harness.llama_text import run_child

    _load(monkeypatch, load_per_core)
    monkeypatch.setattr(doctor, "require_llama_cpp", lambda: None)
    error = {"GGUFVerifyError": gguf_verify.GGUFVerifyError, "EnvironmentProblem": doctor.EnvironmentProblem}[raised]
    with pytest.raises(error, match=message):
        run_child({"kind": "prompt_and_stop", "path": path, "prompt_ids": [[1]]}, timeout=1)


def test_the_text_prompt_child_returns_its_output(fake_llama_children):
    from harness.llama_text import run_child

    assert run_child({"kind": "logits_at", "path": "ok", "prompt_ids": [[7]]}) == {"greedy": [[7]]}
    assert [p.args[-1] for p in fake_llama_children] == ["llama_text"]  # its own child, not harness.gguf_verify's
