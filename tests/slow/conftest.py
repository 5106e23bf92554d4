"""Starts the CPU tier's reference fine-tune in the background when test_finetune_tiny.py is selected
(tests/slow/finetune_tiny_run.py says why); hooks only."""

import finetune_tiny_run


def pytest_collection_finish(session):
    if not session.config.option.collectonly and any(i.path.name == "test_finetune_tiny.py" for i in session.items):
        finetune_tiny_run.start(session.config._tmp_path_factory.mktemp("finetune-tiny"))


def pytest_sessionfinish(session):
    finetune_tiny_run.stop()
