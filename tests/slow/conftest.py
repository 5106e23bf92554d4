"""Starts the CPU tier's reference fine-tune in the background when test_finetune_tiny.py is selected
(tests/slow/finetune_tiny_run.py says why); hooks only. An error here is kept for that module's tests to report, never
an error of the whole session."""


def pytest_collection_finish(session):
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return  # under pytest-xdist each worker would start its own: the tests start it when first asked
    if any(i.path.name == "test_finetune_tiny.py" for i in session.items):
        import finetune_tiny_run

        finetune_tiny_run.start(session.config._tmp_path_factory.mktemp("finetune-tiny"))


def pytest_sessionfinish(session):
    import sys

    if "finetune_tiny_run" in sys.modules:
        sys.modules["finetune_tiny_run"].stop()
