"""What `certify` runs: everything but the suite's self-tests (tests/unit/conftest.py says which those are)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent
ROOT = UNIT.parents[1]
PLUGIN = """
import json, os, sys

def pytest_collection_finish(session):
    with open(os.environ["SCOPE_OUT"], "w") as out:
        json.dump({item.nodeid: sorted(item.fixturenames) for item in session.items}, out)
    with open(os.environ["SCOPE_OUT"] + ".modules", "w") as out:
        json.dump(sorted(m for m in HEAVY if m in sys.modules), out)

HEAVY = ("transformers", "trl", "peft", "datasets", "unsloth")
"""
# Collecting the suite imports no Hugging Face library: a test module that imported harness.finetune at its top cost
# every collection 4.3 s (transformers, trl), twice in the test below and once per certify and pytest run.


def rules():
    spec = importlib.util.spec_from_file_location("unit_conftest", UNIT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def collected(tmp_path, *runs: tuple[str, ...]) -> list[dict[str, list[str]]]:
    """For each run's extra arguments, nodeid -> fixture names of the tests that run would run. The collections run at
    once (each a pytest process of ~4 s, mostly waiting on imports: one after the other they were this test's 8.3 s)."""
    (tmp_path / "scope_plugin.py").write_text(PLUGIN)
    procs = []
    for index, extra in enumerate(runs):
        out = tmp_path / f"scope{index}.json"
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "SCOPE_OUT": str(out)}
        procs.append((out, extra, subprocess.Popen(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "--no-report", "-p", "scope_plugin", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)))
    found = []
    for out, extra, proc in procs:
        output = proc.communicate()[0]
        assert proc.returncode == 0, f"collecting with {list(extra)} exited {proc.returncode}: {output[-2000:]}"
        found.append(json.loads(out.read_text()))
    return found


def test_certify_scope_leaves_out_self_tests_only(tmp_path):
    """`--no-self-tests` (certify's scope) deselects self-tests only: every test outside tests/unit (claims, tests/slow,
    GPU), every unit test that uses a real model, tokenizer, GGUF or llama.cpp (except the listed self-tests) and the
    named instrument checks stay in."""
    conftest = rules()
    assert all((UNIT / f"{name}.py").is_file() for name in conftest.SELF_TEST_MODULES), "a listed module is gone"
    for name in conftest.SELF_TESTS | conftest.INSTRUMENT_TESTS:
        module, test = name.split("::")
        assert f"def {test}(" in (UNIT / module).read_text(), f"{name} is gone"
    everything, certified = collected(tmp_path, (), ("--no-self-tests",))
    assert json.loads((tmp_path / "scope0.json.modules").read_text()) == [], "a test module imports them at its top"
    left_out = set(everything) - set(certified)
    assert set(certified) < set(everything)
    assert not [test for test in left_out if not test.startswith("tests/unit/")]
    for test in left_out:
        short = test.split("/")[-1].split("[")[0]
        assert Path(test.split("::")[0]).stem in conftest.SELF_TEST_MODULES or short in conftest.SELF_TESTS, test
        assert short in conftest.SELF_TESTS or not conftest.LIBRARY_FIXTURES & set(everything[test]), test
    for name in conftest.INSTRUMENT_TESTS:
        assert any(test.endswith(name) for test in certified), name
    for instrument in ("test_lora_quant_probe.py", "test_tokenizer.py", "test_evaluate.py", "test_gguf_reader.py",
                       "test_merge_check.py", "test_bad_input.py::test_truncated_gguf_is_reported_as_corrupt"):
        assert any(instrument in test for test in certified), instrument
