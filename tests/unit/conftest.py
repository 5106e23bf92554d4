"""Which unit tests are the suite's self-tests (marker `selftest`), left out of `python -m harness certify`.

A self-test checks the harness's own logic (report, matrix, run queue, statistics, dataset generator, catalog, spec
checks on recorded evidence, error handling): its verdict cannot change with the user's installed libraries, and CI
runs it on every commit. The other unit tests check a measuring instrument against the installed libraries (the
checkpointing probe, the NF4 delta tolerances, the tokenizer against llama.cpp, batched generation, the GGUF reader,
value re-spelling offsets, LoRA init seeding, batched tokenizing, the leg's pins): a library upgrade can break them,
so certify runs them with the claims. A module not listed here runs in certify: forgetting it costs time, not a check.
"""

import pytest

SELF_TEST_MODULES = {
    "test_arabic_norm", "test_bad_input", "test_blind_spot_checks", "test_cache", "test_catalog", "test_certify_scope",
    "test_dataset",
    "test_doctor", "test_experiment_judging", "test_experiment_stats", "test_failures_not_hidden",
    "test_fault_coverage", "test_gpu_records_replayed", "test_llama_cpp_build", "test_lora_quant_specs",
    "test_masking_checks", "test_matrix", "test_measure_cache", "test_merge_check", "test_pytest_plugin",
    "test_release_workflow", "test_report_and_diff", "test_report_browser", "test_report_evaluation", "test_run_queue",
    "test_scoring", "test_tiers", "test_time_certify",
}
# Single self-tests in modules that also check instruments.
SELF_TESTS = {
    "test_backends.py::test_a_registered_backend_runs_through_finetune",
    "test_backends.py::test_unknown_backend_names_the_registered_ones",
    "test_backends.py::test_no_backend_branches_outside_the_backends_package",
}


@pytest.hookimpl(tryfirst=True)  # before harness.pytest_plugin deselects by the marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.stem
        if module in SELF_TEST_MODULES or f"{item.path.name}::{item.name}" in SELF_TESTS:
            item.add_marker(pytest.mark.selftest)
