"""The claims pytest plugin: markers, the claim registry, `certify`, results.json and the report after every run.

Registered as the `pytest11` entry point `harness.pytest_plugin` (pyproject.toml), so any repository with
this package installed can bind its own tests to the catalog's claims:

    @pytest.mark.claim("LORA-SCALING")
    def test_my_adapter_scaling(certify):
        certify("LORA-SCALING", {"r": 32, "lora_alpha": 64, "scalings": my_model_scalings()}, "tiny")

Every run writes `reports/<run>/results.json` and `index.html` (`$HARNESS_REPORTS` moves them; see
harness.results): at the start marked incomplete, after every claim test, and complete at the end of a
normal run. `--no-report` writes nothing. The run's state lives in one `ClaimSession` in `config.stash`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import spec
from spec.core import evaluate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")


@dataclass
class ClaimSession:
    """One pytest run's claim state: the recorder (None with --no-report) and where results.json went."""

    recorder: object  # harness.results.RunRecorder | None
    results_path: Path | None = None


STATE = pytest.StashKey[ClaimSession]()


def _recorder(config):
    return config.stash[STATE].recorder


def load_fault_catalog(root: Path):
    """<root>/tests/faults/catalog.py as a module (FAULTS, BY_ID): the fault-injection catalog of this repository."""
    import importlib.util
    import sys

    path = Path(root) / "tests" / "faults" / "catalog.py"
    if str(path.parent) not in sys.path:  # the catalog's area files import their `Fault` from beside it
        sys.path.insert(0, str(path.parent))
    module_spec = importlib.util.spec_from_file_location("handbook_fault_catalog", path)
    catalog = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = catalog  # dataclasses look their module up in sys.modules
    module_spec.loader.exec_module(catalog)
    return catalog


def _apply_planted_fault(config) -> None:
    """HARNESS_FAULT=<id>: apply one planted regression from <rootdir>/tests/faults/catalog.py (fault-injection
    runs of this repository only), before any test module imports the libraries it patches."""
    fault_id = os.environ.get("HARNESS_FAULT")
    if fault_id:
        fault = load_fault_catalog(config.rootpath).BY_ID[fault_id]
        if not getattr(fault, "child", False):  # a child-process fault is applied by that child
            fault.apply()


def apply_planted_fault_in_child(gpu: bool = False) -> None:
    """For the suite's child processes that run a library pytest never imports (llama-cpp-python, in a process of its
    own; with gpu=True, Unsloth in the fine-tune and probe processes, called right after `import unsloth`): apply
    HARNESS_FAULT there when the fault is marked `child` (and `gpu` as asked). Once per process. Outside a
    fault-injection run (no HARNESS_FAULT, or no fault catalog beside this checkout) it does nothing."""
    _apply_in_this_process(lambda f: getattr(f, "child", False) and getattr(f, "gpu", False) == gpu)


def apply_planted_fault_in_finetune() -> None:
    """For a CPU fine-tune the suite runs in a child process (`python -m harness finetune`, started in the background by
    tests/slow/conftest.py): that child stands in for the pytest process, so it applies HARNESS_FAULT whatever the
    fault's target, as pytest would (never a `child` fault: llama-cpp-python's run in their own children; never a GPU
    fault: those apply after `import unsloth`). Outside a fault-injection run it does nothing."""
    _apply_in_this_process(lambda f: not getattr(f, "child", False) and not getattr(f, "gpu", False))


_APPLIED_IN_CHILD: set[str] = set()


def _apply_in_this_process(wanted) -> None:
    """HARNESS_FAULT's fault, once per process, where `wanted(fault)`."""
    fault_id = os.environ.get("HARNESS_FAULT")
    if not fault_id or fault_id in _APPLIED_IN_CHILD:
        return
    root = Path(__file__).resolve().parents[1]
    if not (root / "tests" / "faults" / "catalog.py").is_file():
        return
    fault = load_fault_catalog(root).BY_ID.get(fault_id)
    if fault is not None and wanted(fault):
        fault.apply()
        _APPLIED_IN_CHILD.add(fault_id)


def pytest_addoption(parser):
    group = parser.getgroup("handbook", "handbook claim suite")
    group.addoption("--model", default=os.environ.get("HARNESS_MODEL") or "gemma3-270m",
                    help="model for claims that run on the real model (default: the embedded gemma3-270m)")
    group.addoption("--no-report", action="store_true", help="do not write reports/<run>/ (unit tests of the report itself)")
    group.addoption("--faults", action="store_true",
                    help="also run the fault catalog (tests/faults: 41 planted regressions, each in its own pytest "
                         "process; ~8 min on 2 cores); without it those tests are deselected")
    group.addoption("--experiments", action="store_true",
                    help="also run the three experiment claims on a GPU (marker experiments: 50 fine-tunes of the real "
                         "270M, over an hour on one H200; spread over every visible GPU). `certify --gpu` runs them; "
                         "without it `pytest -m gpu` deselects them and the report's Scope section says so")
    group.addoption("--no-self-tests", action="store_true",
                    help="deselect the suite's self-tests (marked selftest: the harness's own logic, which no installed "
                         "library changes); what `python -m harness certify` runs. Every claim test and every check "
                         "of a measuring instrument against the installed libraries still runs")


def cuda_available() -> bool:
    from harness.results import no_gpu_possible

    if no_gpu_possible():  # without importing torch (harness.results.no_gpu_possible says why)
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "slow: slow test")
    config.addinivalue_line("markers", "claim(id): binds a test to a claim ID")
    config.addinivalue_line("markers", "faults: the fault catalog; runs only with --faults")
    config.addinivalue_line("markers", "experiments: the experiment claims' fine-tunes; runs only with --experiments")
    config.addinivalue_line("markers", "step_timing: a step-time benchmark whose server starts at session start "
                                       "(tests/gpu/conftest.py)")
    config.addinivalue_line("markers", "uses_runs(name): reads a background GPU run (e2e, experiments), see tests/gpu")
    config.addinivalue_line("markers", "uses_probes(name, ...): reads GPU probes started with the session "
                                       "(harness.probe_runs), see tests/gpu")
    config.addinivalue_line("markers", "gpu_phase(n): tests run in ascending n (default 0): short GPU probes, then "
                                       "the readers of background runs, the timings last")
    _apply_planted_fault(config)
    recorder = None
    if not (config.getoption("--no-report") or hasattr(config, "workerinput")):
        from harness.results import RunRecorder

        recorder = RunRecorder(command="pytest " + " ".join(config.invocation_params.args))
        recorder.write(complete=False)
    config.stash[STATE] = ClaimSession(recorder)


def _claim_ids(item) -> list[str]:
    ids = []
    for mark in item.iter_markers("claim"):
        for claim_id in mark.args:
            if claim_id not in spec.CLAIMS:
                raise pytest.UsageError(f"{item.nodeid}: unknown claim ID {claim_id!r} (see CATALOG.md)")
            ids.append(claim_id)
    return ids


def _phase(item) -> int:
    mark = item.get_closest_marker("gpu_phase")
    return mark.args[0] if mark else 0


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")  # after -k/-m: counts what would have run
def pytest_collection_modifyitems_self_tests(config, items):
    """--no-self-tests (certify's scope): deselect the tests marked selftest and record how many."""
    if not config.getoption("--no-self-tests"):
        return
    self_tests = [item for item in items if item.get_closest_marker("selftest")]
    if self_tests:
        config.hook.pytest_deselected(items=self_tests)
        items[:] = [item for item in items if not item.get_closest_marker("selftest")]
    recorder = config.stash[STATE].recorder
    if recorder is not None and self_tests:
        recorder.extras["self_tests_not_run"] = {
            "count": len(self_tests), "why": "certify runs the claim tests and the instrument checks; the suite's "
                                             "self-tests (marker selftest) run with `python -m pytest` and in CI"}


EXPERIMENTS_WHY = ("the experiment claims are a GPU target of their own: 50 fine-tunes of the real 270M (over an hour "
                   "on one H200, spread over every visible GPU); `pytest -m gpu --experiments` or `python -m harness "
                   "certify --gpu` runs them")


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")  # after -k/-m: names only what they kept
def pytest_collection_modifyitems_experiments(config, items):
    """On a CUDA machine without --experiments: deselect the experiment claims' tests and record which claims that left
    out (the report's Scope section). Without CUDA they stay, to skip for want of a GPU, saying so."""
    if config.getoption("--experiments") or not cuda_available():
        return
    chosen = [item for item in items if item.get_closest_marker("experiments")]
    if not chosen:
        return
    config.hook.pytest_deselected(items=chosen)
    items[:] = [item for item in items if not item.get_closest_marker("experiments")]
    recorder = config.stash[STATE].recorder
    if recorder is not None:
        recorder.extras["experiments_not_run"] = {"claims": sorted({c for item in chosen for c in _claim_ids(item)}),
                                                  "why": EXPERIMENTS_WHY}


def pytest_collection_modifyitems(config, items):
    # Short GPU probes first (the long runs go on in the background meanwhile), then the tests that wait for
    # those runs, then the timings, which need the GPU to themselves. The sort is stable: files keep their order.
    items.sort(key=_phase)
    if not config.getoption("--faults"):
        deselected = [item for item in items if item.get_closest_marker("faults")]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker("faults")]
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    has_cuda = cuda_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(no_cuda)
        for claim_id in _claim_ids(item):
            item.user_properties.append(("claim", claim_id))


@pytest.fixture
def certify(request):
    """Evaluate a claim on measurements, record the outcome, and fail the test if it is a regression.

    Usage: `certify("LORA-RANK", measurements, context="tiny")` returns the Outcome.
    """
    recorder = _recorder(request.config)
    declared = _claim_ids(request.node)

    failures: list[str] = []

    def _fail(message: str):
        # The test fails because of the regressions certify recorded: those claims are red already. Any other
        # failure of a claim test (an assertion after certify, an error) turns every claim it is bound to red.
        if recorder is not None:
            recorder.test(request.node.nodeid, declared).failed_by_certify = True
        pytest.fail(message, pytrace=False)

    def _certify(claim_id: str, measurements: dict, context: str = "default", soft: bool = False):
        """soft=True records a regression and goes on; `certify.check()` then fails with all of them."""
        if claim_id not in declared:
            raise AssertionError(f"{request.node.nodeid} certifies {claim_id} without @pytest.mark.claim({claim_id!r})")
        outcome = evaluate(spec.CLAIMS[claim_id], measurements, context)
        if recorder is not None:
            recorder.test(request.node.nodeid, declared).outcomes.append(outcome)
        if outcome.regression:
            failures.append(outcome.explain())
            if not soft:
                _fail(outcome.explain())
        return outcome

    def _check():
        if failures:
            _fail("\n".join(failures))

    _certify.check = _check
    return _certify


@pytest.fixture(scope="session")
def run_extras(request):
    """A dict the report renders (loss curves, schedules, grids); empty when no report is written."""
    recorder = _recorder(request.config)
    return recorder.extras if recorder is not None else {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    from harness.doctor import environment_problem_as_skip, leg_breakage, skip_reason

    environment_problem_as_skip(item, call, report)
    recorder = _recorder(item.config)
    if recorder is not None:
        recorder.durations[item.nodeid] = round(recorder.durations.get(item.nodeid, 0.0) + report.duration, 3)
        recorder.add_span(item.nodeid, report.start, report.stop)
    ids = _claim_ids(item)
    leg_breakage(report)  # every test's: inside a version leg a leg-pinned reader's skip is a failure, claim or not
    if recorder is not None and not ids and report.skipped:
        from harness.doctor import is_environment_problem

        if is_environment_problem(skip_reason(report)):  # an instrument's check that could not run here: never silent
            recorder.unbound_problems.setdefault(skip_reason(report), []).append(item.nodeid)
    if recorder is None or not ids:
        return
    record = recorder.test(item.nodeid, ids)
    if report.skipped and record.outcome != "failed":
        record.outcome = "skipped"
        record.reason = skip_reason(report)
    elif report.failed:
        record.outcome = "failed"
        crash = getattr(report.longrepr, "reprcrash", None)  # "AssertionError: <message>", where pytest has it
        text = crash.message if crash is not None else (report.longreprtext or "").strip().splitlines()[-1:]
        record.reason = (" ".join(text.split()) if isinstance(text, str) else " ".join(text))[:500] or "failed"
    elif report.when == "call" and record.outcome == "unknown":
        record.outcome = "passed"
    if report.when == "teardown":
        recorder.write(complete=False)


def pytest_sessionfinish(session, exitstatus):
    recorder = _recorder(session.config)
    if recorder is None:
        return
    # Only a session that ran its selection to the end is complete: interrupted, stopped by a usage error (a --model
    # that does not resolve: conftest.gemma_dir), an internal error or no tests collected once wrote a complete
    # report whose banner read "Certified" with every claim skipped.
    ran = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    session.config.stash[STATE].results_path = recorder.write(complete=ran)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    recorder = _recorder(config)
    if recorder is None:
        return
    counts: dict[str, int] = {}
    claims = recorder.claims()
    for entry in claims:
        counts[entry["verdict"]] = counts.get(entry["verdict"], 0) + 1
    regressions = [e["id"] for e in claims if e["regression"]]
    terminalreporter.section("handbook claims")
    terminalreporter.write_line("verdicts: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
    if regressions:
        terminalreporter.write_line("REGRESSIONS: " + ", ".join(regressions))
        from harness.results import regression_headline, regression_split

        if regression_split({"claims": claims})[1]:  # some are red by a failing test: say which
            terminalreporter.write_line("  " + regression_headline({"claims": claims}))
    for problem in recorder.environment_problems():
        unchecked = ", ".join(problem["claims"] or problem.get("tests") or [])
        terminalreporter.write_line(f"ENVIRONMENT PROBLEM (not a regression; {unchecked} could not be checked here): "
                                    f"{problem['reason']}")
    faults = recorder.extras.get("faults")
    if faults:
        missed = [f["id"] for f in faults["faults"] if not f["caught"]]
        terminalreporter.write_line(f"fault catalog: {faults['caught']}/{faults['planted']} planted regressions caught, "
                                    f"{len(faults.get('claims_covered', []))} claims covered"
                                    + (f"; MISSED: {', '.join(missed)}" if missed else ""))
    terminalreporter.write_line(f"report: {recorder.run_dir / 'index.html'}")
