"""The pytest plugin: markers, the claim registry, shared heavy fixtures, and the report hooks.

Every run writes `reports/<run>/results.json` and `index.html` (see harness.results): at the start
marked incomplete, after every claim test, and complete at the end of a normal run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import spec
from spec.core import evaluate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")


def _hypothesis_profiles() -> None:
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:
        return
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", derandomize=True, max_examples=25, print_blob=True, **common)
    settings.register_profile("dev", max_examples=100, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


_hypothesis_profiles()


def pytest_addoption(parser):
    group = parser.getgroup("handbook", "handbook claim suite")
    group.addoption("--model", default=os.environ.get("HARNESS_MODEL", "gemma3-270m"),
                    help="model for claims that run on the real model (default: the embedded gemma3-270m)")
    group.addoption("--no-report", action="store_true", help="do not write reports/<run>/ (unit tests of the report itself)")
    group.addoption("--faults", action="store_true",
                    help="also run the fault catalog (tests/faults: 16 planted regressions, each in its own pytest "
                         "process; ~4 min on 2 cores); without it those tests are deselected")


def cuda_available() -> bool:
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
    config.addinivalue_line("markers", "uses_runs(name): reads a background GPU run (e2e, experiments), see tests/gpu")
    config.addinivalue_line("markers", "gpu_phase(n): tests run in ascending n (default 0): short GPU probes, then "
                                       "the readers of background runs, the timings last")
    if config.getoption("--no-report") or hasattr(config, "workerinput"):
        config._handbook_recorder = None
        return
    from harness.results import RunRecorder

    recorder = RunRecorder(command="pytest " + " ".join(config.invocation_params.args))
    recorder.write(complete=False)
    config._handbook_recorder = recorder


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
    recorder = request.config._handbook_recorder
    declared = _claim_ids(request.node)

    failures: list[str] = []

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
                pytest.fail(outcome.explain(), pytrace=False)
        return outcome

    def _check():
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)

    _certify.check = _check
    return _certify


@pytest.fixture(scope="session")
def run_extras(request):
    """A dict the report renders (loss curves, schedules, grids); empty when no report is written."""
    recorder = request.config._handbook_recorder
    return recorder.extras if recorder is not None else {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    from harness.doctor import environment_problem_as_skip

    environment_problem_as_skip(item, call, report)
    recorder = item.config._handbook_recorder
    ids = _claim_ids(item)
    if recorder is None or not ids:
        return
    record = recorder.test(item.nodeid, ids)
    if report.skipped and record.outcome != "failed":
        record.outcome = "skipped"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        record.reason = reason.removeprefix("Skipped: ")
    elif report.failed:
        record.outcome = "failed"
        record.reason = (report.longreprtext or "").strip().splitlines()[-1][:500] if report.longreprtext else "failed"
    elif report.when == "call" and record.outcome == "unknown":
        record.outcome = "passed"
    if report.when == "teardown":
        recorder.write(complete=False)


def pytest_sessionfinish(session, exitstatus):
    recorder = session.config._handbook_recorder
    if recorder is None:
        return
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    path = recorder.write(complete=not interrupted)
    session.config._handbook_results_path = path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    recorder = config._handbook_recorder
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
    for problem in recorder.environment_problems():
        terminalreporter.write_line(f"ENVIRONMENT PROBLEM (not a regression; {', '.join(problem['claims'])} could "
                                    f"not be checked here): {problem['reason']}")
    terminalreporter.write_line(f"report: {recorder.run_dir / 'index.html'}")


# ---- shared heavy fixtures: built once per session -------------------------------------------


@pytest.fixture(scope="session")
def tiny_dir():
    from harness.models import resolve

    return resolve("tiny").path


@pytest.fixture(scope="session")
def gemma_dir(request):
    """The real model's checkpoint folder (materialized once into the cache)."""
    from harness.models import ModelSourceError, resolve

    try:
        return resolve(request.config.getoption("--model")).path
    except ModelSourceError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    """The faithful Gemma 3 tokenizer (the same files for tiny and the embedded 270M)."""
    from harness.tokenizer import load_tokenizer

    return load_tokenizer(str(tiny_dir))


@pytest.fixture(scope="session")
def dataset():
    from harness.dataset import generate

    return generate(seed=0)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir, tmp_path_factory):
    from harness.gguf_export import export_q8_0

    return export_q8_0(tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf")


def _healthy(check) -> None:
    """Skip as an environment problem unless the reader `check` (a harness.doctor check) is healthy here."""
    health = check()
    if health.ok is False:
        pytest.skip(health.skip_reason())


@pytest.fixture(scope="session")
def llama_cpp_reader():
    """llama.cpp, checked once a session on Google's own GGUF (harness.doctor): a missing or crashing build skips
    the claims that need it as an environment problem."""
    from harness import doctor

    _healthy(doctor.llama_cpp)


@pytest.fixture(scope="session")
def llama_cpp_tree():
    """llama.cpp's tree vendored from the llama-cpp-python sdist (never downloaded here: install.sh fetches it)."""
    from harness import doctor
    from harness.llama_cpp_vendor import find_tree

    _healthy(doctor.llama_cpp_converter)
    return find_tree()


@pytest.fixture(scope="session")
def tiny_gguf_converter(llama_cpp_tree, tiny_dir, tmp_path_factory):
    """The tiny checkpoint through llama.cpp's own convert_hf_to_gguf.py --outtype q8_0 (Unsloth's converter)."""
    from harness.llama_cpp_vendor import convert

    return Path(convert(llama_cpp_tree, tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny-converter-q8_0.gguf")["file"])


@pytest.fixture(scope="session")
def gemma_gguf(gemma_dir, tmp_path_factory):
    from harness.gguf_export import export_q8_0

    return export_q8_0(gemma_dir, tmp_path_factory.mktemp("gguf") / "gemma3-270m-q8_0.gguf")


def _apply_planted_fault() -> None:
    """HARNESS_FAULT=<id>: apply one planted regression from tests/faults/catalog.py (fault-injection runs only)."""
    fault_id = os.environ.get("HARNESS_FAULT")
    if not fault_id:
        return
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "tests" / "faults" / "catalog.py"
    module_spec = importlib.util.spec_from_file_location("handbook_fault_catalog", path)
    catalog = importlib.util.module_from_spec(module_spec)
    import sys

    sys.modules[module_spec.name] = catalog  # dataclasses look their module up in sys.modules
    module_spec.loader.exec_module(catalog)
    catalog.BY_ID[fault_id].apply()


_apply_planted_fault()
