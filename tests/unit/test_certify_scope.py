"""What `certify` runs: everything but the suite's self-tests (tests/unit/conftest.py lists them)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent
ROOT = UNIT.parents[1]


def listed():
    spec = importlib.util.spec_from_file_location("unit_conftest", UNIT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SELF_TEST_MODULES, module.SELF_TESTS


def collected(*extra) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--no-report", *extra],
                         capture_output=True, text=True, cwd=ROOT).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def test_certify_scope_leaves_out_self_tests_only():
    """`--no-self-tests` (certify's scope) deselects the listed self-tests and nothing else: every test outside
    tests/unit (claims, tests/slow, GPU) and the instrument checks stay in."""
    modules, single = listed()
    assert all((UNIT / f"{name}.py").is_file() for name in modules), "a listed self-test module is gone"
    assert all((UNIT / name.split("::")[0]).is_file() for name in single), "a listed self-test's module is gone"
    everything, certified = collected(), collected("--no-self-tests")
    left_out = everything - certified
    assert certified < everything
    assert all(Path(test.split("::")[0]).stem in modules or test.split("/")[-1].split("[")[0] in single
               for test in left_out)
    assert {test for test in everything if not test.startswith("tests/unit/")} <= certified
    for instrument in ("test_lora_quant_probe.py", "test_tokenizer.py", "test_evaluate.py", "test_gguf_reader.py"):
        assert any(instrument in test for test in certified)
