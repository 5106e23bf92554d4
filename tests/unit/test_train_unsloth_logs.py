"""HARNESS_LOG_RECOMPILES=1 turns torch's recompile and graph-break logs back on after `import unsloth` (Unsloth Zoo
sets every torch log to CRITICAL at import, so TORCH_LOGS=recompiles printed nothing on the H200, 2026-11-29)."""

import logging


def test_recompile_logs_follow_the_variable(monkeypatch):
    """Planted: off without the variable (torch's logs as Unsloth left them), on with it; reset afterwards."""
    import torch
    import torch._logging._internal as internal

    from harness.train_unsloth import log_recompiles

    torch._logging.set_logs(all=logging.CRITICAL)  # what Unsloth Zoo's import does
    try:
        monkeypatch.delenv("HARNESS_LOG_RECOMPILES", raising=False)
        assert log_recompiles() is False and not internal.log_state.is_artifact_enabled("recompiles")
        monkeypatch.setenv("HARNESS_LOG_RECOMPILES", "1")
        assert log_recompiles() is True
        assert internal.log_state.is_artifact_enabled("recompiles")
        assert internal.log_state.is_artifact_enabled("graph_breaks")
    finally:
        torch._logging.set_logs()  # torch's defaults again for the rest of the session


def test_a_torch_that_cannot_log_recompiles_only_says_so(monkeypatch, capsys):
    """The variable on a torch without set_logs' artifacts: a printed line, never an error of the fine-tune."""
    import torch

    from harness.train_unsloth import log_recompiles

    def refuses(**kwargs):
        raise TypeError("set_logs() got an unexpected keyword argument 'recompiles'")

    monkeypatch.setenv("HARNESS_LOG_RECOMPILES", "1")
    monkeypatch.setattr(torch._logging, "set_logs", refuses)
    assert log_recompiles() is False and "cannot log recompiles" in capsys.readouterr().out
