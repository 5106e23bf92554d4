"""Bad input gets a clear error that says what to do, and loses nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_truncated_gguf_is_reported_as_corrupt(tiny_gguf, tmp_path):
    """A GGUF cut in half: verify-gguf exits 1 with one line, 'corrupt or truncated' and the advice to re-export, and no
    traceback (it printed two chained ones before the message until 2026-11-29)."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    proc = subprocess.run([sys.executable, "-m", "harness", "verify-gguf", str(broken), "--no-llama"], capture_output=True,
                          text=True, cwd=ROOT)
    last = proc.stderr.strip().splitlines()[-1]  # (a library's warning at import may come before it)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert last.startswith(f"error: {broken} is not a readable GGUF file")
    assert "corrupt or truncated" in last and "export it again" in last


def test_a_reader_broken_on_googles_file_too_is_one_line_naming_the_doctor(monkeypatch, capsys, tmp_path):
    """A CLI command that meets an environment problem (llama.cpp crashing on Google's own GGUF too) exits 2 with the
    cause, the fix and the doctor, no traceback."""
    from harness import cli, gguf_verify
    from harness.doctor import EnvironmentProblem, Health

    def crashing(*args, **kwargs):
        raise EnvironmentProblem(Health("llama.cpp", False, "crashed (signal 11) on Google's own file", "rebuild it"))

    monkeypatch.setattr(gguf_verify, "verify", crashing)
    (tmp_path / "any.gguf").write_bytes(b"GGUF")
    assert cli.main(["verify-gguf", str(tmp_path / "any.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "crashed (signal 11)" in err and "rebuild it" in err
    assert "python -m harness doctor" in err and "Traceback" not in err


def test_not_a_gguf_is_reported(tmp_path):
    """Random bytes are not a GGUF file: a GGUFVerifyError, not a stack of struct errors."""
    from harness.gguf_verify import GGUFVerifyError, read

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(1024))
    with pytest.raises(GGUFVerifyError, match="not a readable GGUF"):
        read(junk)


def test_a_reader_failing_for_its_own_reasons_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    """Only what a bad file makes gguf-py raise is "corrupt or truncated — export it again"; an AttributeError (a
    gguf upgrade that moved an attribute) or a PermissionError reach the caller as themselves. Planted: the reader
    class raising each; a bad file (random bytes) is still the file's."""
    from harness import gguf_verify

    some = tmp_path / "some.gguf"
    some.write_bytes(os.urandom(1024))
    with pytest.raises(gguf_verify.GGUFVerifyError, match="corrupt or truncated"):
        gguf_verify.read(some)
    for error in (AttributeError("GGUFReader has no attribute 'fields'"), PermissionError(13, "Permission denied")):
        def reader(path, error=error):
            raise error

        monkeypatch.setattr(gguf_verify, "fast_reader_class", lambda reader=reader: reader)
        with pytest.raises(type(error)):
            gguf_verify.read(some)


def test_model_folder_without_tokenizer(tmp_path):
    """A checkpoint folder with no tokenizer files is refused with the way to get one."""
    from harness.models import ModelSourceError, resolve

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="no tokenizer"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("conversation,message", [
    ([], "empty or malformed"),
    ([{"role": "user"}], "empty or malformed"),
    ([{"role": "user", "content": "مرحبا"}], "no model turn"),
])
def test_rows_that_cannot_train_are_named(tokenizer, conversation, message):
    """Empty, malformed and model-turn-less conversations raise a ValueError naming the row (no NaN loss later)."""
    from harness.masking import reference_masker
    from harness.backends.sft import tokenize_conversations

    with pytest.raises(ValueError, match=message):
        tokenize_conversations(tokenizer, [conversation], reference_masker(tokenizer), 512)


def test_oom_rows_are_evidence_not_crashes():
    """A VRAM grid with an out-of-memory shape still gives a verdict from the shapes that ran."""
    from spec import CLAIMS, evaluate

    rows = [{"mode": m, "seq": 4096, "batch": 8, "weights_mib": 400, "oom": m == "False",
             "peak_allocated_mib": None if m == "False" else p} for m, p in (("unsloth", 1000), ("True", 1250), ("False", 0))]
    outcome = evaluate(CLAIMS["GC-VRAM"], {"grid": rows}, "gpu")
    assert outcome.verdict == "corrected" and outcome.evidence["shapes"][0]["saving_total"] == 0.2


def test_killed_run_leaves_an_incomplete_report_that_the_next_run_names(tmp_path):
    """SIGKILL in the middle of a run: its results.json says complete=false, and the next report says so."""
    reports = tmp_path / "reports"
    test = tmp_path / "test_sleep.py"
    test.write_text("import time\n\ndef test_sleep():\n    time.sleep(60)\n")
    env = {**os.environ, "HARNESS_REPORTS": str(reports)}
    # the project's conftest as a plugin (-p conftest), so a test file outside the tree gets its report hooks
    proc = subprocess.Popen([sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))", "-q",
                             "-p", "no:cacheprovider", "-p", "conftest", "--rootdir", str(tmp_path), str(test)],
                            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (reports / "latest" / "results.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads((reports / "latest" / "results.json").read_text())
    assert killed["complete"] is False
    from harness.results import RunRecorder

    recorder = RunRecorder(root=reports, run_id="next")
    assert recorder.previous == {"run": killed["run"], "complete": False, "started": killed["started"]}
    assert "did not finish" in (recorder.write(complete=True).parent / "index.html").read_text()


def test_llamacpp_load_failure_is_reported_not_fatal(llama_cpp_reader, tiny_gguf, tmp_path):
    """llama.cpp loads in a child process: a corrupt file gives a message naming it; a good one loads."""
    from harness.gguf_verify import llamacpp_loads

    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + bytes(100))
    ok, why = llamacpp_loads(bad)
    assert (ok, "corrupt.gguf" in why) == (False, True)
    assert llamacpp_loads(tiny_gguf) == (True, "loaded")


def test_llamacpp_build_with_static_libstdcxx_is_named(tmp_path, monkeypatch):
    """A llama-cpp-python whose libllama does not link libstdc++.so is named, with the rebuild to do; a good one is not."""
    import importlib.util
    import shutil

    from harness.gguf_verify import build_problem

    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed (binutils)")
    if importlib.util.find_spec("llama_cpp") is not None:
        assert build_problem() == ""  # this machine's build links libstdc++.so
    fake = tmp_path / "llama_cpp"
    (fake / "lib").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    shutil.copy("/bin/true", fake / "lib" / "libllama.so")  # an ELF file that needs libc only
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "llama_cpp", raising=False)
    message = build_problem()
    assert "does not link libstdc++.so" in message and "CXX=/usr/bin/g++" in message


@pytest.mark.parametrize("argv, code, says", [
    (["compare-gguf", "{missing}", "{gguf}"], 1, "{missing}: no such file"),
    (["verify-gguf", "{missing}", "--no-llama"], 1, "{missing}: no such file"),
    (["verify-gguf", "{gguf}", "--against", "{tmp}", "--no-llama"], 2,
     "--against {tmp}: not a checkpoint folder (no config.json, model.safetensors)"),
    (["compare-gguf", "{gguf}", "{gguf}", "--against", "{tmp}"], 2,
     "--against {tmp}: not a checkpoint folder (no tokenizer_config.json)"),
])
def test_the_gguf_commands_name_a_missing_input_in_one_line(tmp_path, capsys, argv, code, says):
    """A missing GGUF or a folder that is no checkpoint: one line saying which and what to give, no traceback (both
    raised FileNotFoundError through the CLI until 2026-11-29)."""
    from harness import cli

    gguf = tmp_path / "some.gguf"
    gguf.write_bytes(b"GGUF")  # never read: the other argument is refused first
    names = {"missing": str(tmp_path / "missing.gguf"), "gguf": str(gguf), "tmp": str(tmp_path)}
    assert cli.main([arg.format(**names) for arg in argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: " + says.format(**names)) and "Traceback" not in err


GEMMA_TEST = "tests/slow/test_embedded_model.py::test_greedy_arabic_capital_of_egypt_is_cairo"
TINY_TEST = "tests/unit/test_tokenizer.py::test_sentencepiece_model_declares_its_unknown_piece"


def test_a_model_that_does_not_resolve_never_passes_in_silence(tmp_path, capsys, monkeypatch):
    """`certify --model /typo` once certified (exit 0) with the real model's 18 tests skipped. Now: certify refuses a
    named model that does not resolve before anything runs (exit 3); pytest run with one stops at its first use (exit
    4, the message); the embedded default that cannot be built (its package missing; here a wrong $HARNESS_GGUF in an
    empty cache) is an environment problem: a skip with the fix, the report's banner, certify's exit 2."""
    from harness import cli
    from harness.results import certify_exit_code

    ran = []
    monkeypatch.setattr(pytest, "main", lambda *a, **k: ran.append(a) or 0)
    assert cli.main(["certify", "--model", str(tmp_path / "typo")]) == 3
    assert capsys.readouterr().err.startswith(f"error: --model {tmp_path / 'typo'}: no such folder") and ran == []
    monkeypatch.undo()

    env = {k: v for k, v in os.environ.items() if k != "HARNESS_MODEL"}  # (certify --model X sets it for its session)
    env["HARNESS_REPORTS"] = str(tmp_path / "reports")
    named = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                            f"--model={tmp_path / 'typo'}", GEMMA_TEST], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert named.returncode == pytest.ExitCode.USAGE_ERROR, named.stdout[-2000:]
    assert f"--model {tmp_path / 'typo'}: no such folder" in named.stdout
    stopped = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    assert stopped["complete"] is False and certify_exit_code(named.returncode, stopped) == 3  # never "Certified"

    (tmp_path / "not-the-model.gguf").write_bytes(b"GGUF")
    env.update(HARNESS_CACHE=str(tmp_path / "cache"), HARNESS_GGUF=str(tmp_path / "not-the-model.gguf"))
    embedded = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                               "-rs", GEMMA_TEST, TINY_TEST], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert embedded.returncode == 0 and "2 skipped" in embedded.stdout, embedded.stdout[-2000:]
    data = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    (problem,) = data["environment_problems"]  # tiny's tokenizer is the GGUF's too: the same problem, both tests
    assert problem["reason"].startswith("environment problem: the embedded model:")
    assert problem["tests"] == [GEMMA_TEST, TINY_TEST] and certify_exit_code(embedded.returncode, data) == 2


@pytest.mark.parametrize("argv, says", [
    (["finetune", "--model", "tiny", "--max-steps", "-1"], "argument --max-steps: -1 is not a positive whole number"),
    (["finetune", "--model", "tiny", "--eval-limit", "0"], "argument --eval-limit: 0 is not a positive whole number"),
    (["finetune", "--model", "tiny", "--arm", "nonsense"], "argument --arm: invalid choice: 'nonsense'"),
    (["experiments", "--seeds", "3407,x"], "argument --seeds: '3407,x': give comma-separated whole numbers"),
    (["experiments", "--parallel", "0"], "argument --parallel: 0 is not a positive whole number"),
])
def test_an_argument_out_of_range_is_a_usage_error_before_anything_runs(capsys, argv, says):
    """argparse's one-line usage error, exit 2: `finetune --max-steps -1` once trained by epochs (transformers' "no step
    limit": 4,500 steps of the tiny model), `--seeds x` and `--arm nonsense` raised a ValueError's traceback."""
    from harness import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2 and says in capsys.readouterr().err


def test_diff_refuses_and_matrix_warns_of_a_path_that_does_not_exist(tmp_path, capsys):
    """diff raised FileNotFoundError's traceback: now one line naming the path, exit 2. matrix keeps a leg that left
    nothing as a column "could not be installed" (a CI leg whose job died), and says on stderr that the path does not
    exist (a typo showed only as such a column)."""
    from harness import cli

    assert cli.main(["diff", str(tmp_path / "old"), str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no results.json at {tmp_path / 'old'}")
    assert cli.main(["matrix", str(tmp_path / "typo"), "--out", str(tmp_path / "m")]) == 0
    said = capsys.readouterr()
    assert said.err == f"warning: {tmp_path / 'typo'} does not exist: shown as a leg that could not be installed\n"
    assert "typo: could not be installed" in said.out
