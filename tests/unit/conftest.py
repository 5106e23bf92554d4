"""Which unit tests are the suite's self-tests (marker `selftest`), left out of `python -m harness certify`.

A self-test checks the harness's own logic (report, matrix, run queue, statistics, dataset generator, catalog, spec
checks on recorded evidence, error handling): its verdict cannot change with the user's installed libraries, and CI
runs it on every commit. The other unit tests check a measuring instrument against the installed libraries (the
checkpointing probe, the NF4 delta tolerances, the tokenizer against llama.cpp, batched generation, the GGUF reader,
value re-spelling offsets, LoRA init seeding, batched tokenizing, torch's NaN handling in the merge check, the leg's
pins): a library upgrade can break them, so certify runs them with the claims.

A test of a listed module is a self-test unless it uses a fixture that brings a real model, tokenizer, GGUF or
llama.cpp (LIBRARY_FIXTURES) or is named in INSTRUMENT_TESTS (it calls an installed library directly). A module not
listed runs in certify: forgetting it costs time, not a check. tests/unit/test_certify_scope.py checks the rules.
"""

from pathlib import Path

import pytest

SELF_TEST_MODULES = {
    "test_arabic_norm", "test_bad_input", "test_bundle", "test_blind_spot_checks", "test_cache", "test_catalog", "test_certify_scope",
    "test_dataset",
    "test_doctor", "test_experiment_judging", "test_experiment_stats", "test_experiments_target", "test_failures_not_hidden",
    "test_fault_coverage", "test_gpu_conftest", "test_gpu_records_replayed", "test_llama_cpp_build", "test_lora_quant_specs",
    "test_masking_checks", "test_matrix", "test_measure_cache", "test_pytest_plugin",
    "test_malloc_policy", "test_omp_policy", "test_probe_runs",
    "test_release_workflow", "test_report_and_diff", "test_report_browser", "test_report_evaluation", "test_run_queue",
    "test_scoring", "test_step_client", "test_tiers", "test_time_certify",
}
# Single self-tests in modules that also check instruments.
SELF_TESTS = {
    # The backend registry's wiring. It runs a real 2-step fine-tune (tiny_dir), the same hf path through
    # harness.finetune that E2E-REFERENCE's tiny run takes in certify (tests/slow/test_finetune_tiny.py).
    "test_backends.py::test_a_registered_backend_runs_through_finetune",
    "test_backends.py::test_unknown_backend_names_the_registered_ones",
    "test_backends.py::test_no_backend_branches_outside_the_backends_package",
    # The harness's own bookkeeping around a real generate call (threads it gives torch; the stats it keeps): what they
    # check is this project's code, which no library upgrade changes; the calls themselves are certify's elsewhere.
    "test_gguf_heldout.py::test_the_transformers_reference_runs_on_a_bounded_share_of_the_cores",
    "test_gguf_heldout.py::test_where_unsloth_is_imported_the_reference_is_computed_in_a_child_process",
    "test_evaluate.py::test_the_first_batch_is_timed_apart",
    "test_gguf_heldout.py::test_one_reader_of_the_share_for_the_argument_and_the_environment",
    "test_gguf_heldout.py::test_a_share_argument_that_is_not_a_count_is_refused",
    "test_gguf_heldout.py::test_a_llama_child_gets_the_cores_the_sessions_background_runs_leave",
}
# Fixtures that bring an installed library's real behaviour into a test: a test using one checks an instrument.
LIBRARY_FIXTURES = {"tokenizer", "tiny_dir", "gemma_dir", "tiny_gguf", "tiny_gguf_converter", "gemma_gguf",
                    "llama_cpp_reader", "llama_cpp_tree"}
# Tests of listed modules that call an installed library without such a fixture.
INSTRUMENT_TESTS = {
    "test_bad_input.py::test_llamacpp_build_with_static_libstdcxx_is_named",  # the installed llama-cpp-python's linkage
}
HERE = Path(__file__).resolve().parent


def is_self_test(item) -> bool:
    name = f"{item.path.name}::{item.originalname}"
    if item.path.resolve().parent != HERE or name in INSTRUMENT_TESTS:
        return False
    if name in SELF_TESTS:
        return True
    return item.path.stem in SELF_TEST_MODULES and not (LIBRARY_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)  # before harness.pytest_plugin deselects by the marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_self_test(item):
            item.add_marker(pytest.mark.selftest)
