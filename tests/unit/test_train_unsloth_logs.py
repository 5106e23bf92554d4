"""HARNESS_LOG_RECOMPILES=1 turns torch's recompile and graph-break logs back on after `import unsloth` (Unsloth Zoo
sets every torch log to CRITICAL at import, so TORCH_LOGS=recompiles printed nothing on the H200, 2026-11-29)."""

import logging


def test_recompile_logs_follow_the_variable(monkeypatch, capsys):
    """Planted: off without the variable (torch's logs as Unsloth left them), on with it; reset afterwards. When on, the
    log says so in the line harness.record_facts.dynamo_recompiles reads as `logged`."""
    import torch
    import torch._logging._internal as internal

    from harness.record_facts import RECOMPILES_ON
    from harness.train_unsloth import log_recompiles

    torch._logging.set_logs(all=logging.CRITICAL)  # what Unsloth Zoo's import does
    try:
        monkeypatch.delenv("HARNESS_LOG_RECOMPILES", raising=False)
        assert log_recompiles() is False and not internal.log_state.is_artifact_enabled("recompiles")
        assert RECOMPILES_ON not in capsys.readouterr().out
        monkeypatch.setenv("HARNESS_LOG_RECOMPILES", "1")
        assert log_recompiles() is True
        out = capsys.readouterr().out
        assert RECOMPILES_ON in out
        limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
        assert f"torch's recompile limit is {limit}\n" in out  # this torch's, for the summary's at_the_limit
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


SESSION_17_LOG = """\
HARNESS_LOG_RECOMPILES: torch's recompile and graph-break logs are on
V1129 12:14:26.358000 2884 torch/_dynamo/guards.py:4760] [2/3] [__recompiles] Recompiling function forward in /opt/torch/.venv/lib/python3.12/site-packages/transformers/models/gemma3/modeling_gemma3.py:399
V1129 12:14:26.358000 2884 torch/_dynamo/guards.py:4760] [2/3] [__recompiles]     triggered by the following guard failure(s):
V1129 12:14:26.358000 2884 torch/_dynamo/guards.py:4760] [2/3] [__recompiles]     - 2/2: GLOBAL_STATE changed: grad_mode
V1129 12:15:08.763000 2884 torch/_dynamo/guards.py:4760] [0/3] [__recompiles] Recompiling function create_block_mask in /opt/torch/.venv/lib/python3.12/site-packages/torch/nn/attention/flex_attention.py:1207
V1129 12:15:15.195000 2884 torch/_dynamo/guards.py:4760] [2/4] [__recompiles] Recompiling function forward in /opt/torch/.venv/lib/python3.12/site-packages/transformers/models/gemma3/modeling_gemma3.py:399
{'loss': 0.0087, 'grad_norm': 0.01}
"""


def test_a_runs_log_is_summarized_into_what_was_compiled_again():
    """The GPU tier's reading of the reference run's log (harness.record_facts.dynamo_recompiles), on lines of session
    17's log: each function recompiled with its count; the recompile limit's hits and graph breaks counted; a log without
    the switch's line says its zero counts mean nothing. Planted: a limit hit and a graph break."""
    from harness.record_facts import dynamo_recompiles

    seen = dynamo_recompiles(SESSION_17_LOG)
    assert seen == {"logged": True, "recompiles": 3,
                    "recompiled": {"forward in gemma3/modeling_gemma3.py:399": 2,
                                   "create_block_mask in attention/flex_attention.py:1207": 1},
                    "entries": {"forward in gemma3/modeling_gemma3.py:399": 5,  # [2/4]: its 4th recompile, 5 entries
                                "create_block_mask in attention/flex_attention.py:1207": 4},
                    "recompile_limit": None, "at_the_limit": [], "recompile_limit_hits": [], "graph_breaks": 0}
    # the limit the run's torch printed: a function whose entries reach it is named (one more shape class and torch
    # runs it uncompiled: session 18's decoder layer had 8 entries of 8)
    with_limit = dynamo_recompiles(SESSION_17_LOG.replace(
        "are on\n", "are on\nHARNESS_LOG_RECOMPILES: torch's recompile limit is 5\n", 1))
    assert with_limit["recompile_limit"] == 5 and with_limit["at_the_limit"] == ["forward in gemma3/modeling_gemma3.py:399"]
    assert dynamo_recompiles(SESSION_17_LOG.replace("are on\n", "are on\nHARNESS_LOG_RECOMPILES: torch's recompile "
                                                                   "limit is 8\n", 1))["at_the_limit"] == []
    hit = ("W1129 12:16:04.000000 2884 torch/_dynamo/convert_frame.py:1994] torch._dynamo hit config.recompile_limit (8)\n"
           "V1129 12:16:05.000000 2884 torch/_dynamo/symbolic_convert.py:1] [2/8] [__graph_breaks] Graph break in user code\n")
    planted = dynamo_recompiles(SESSION_17_LOG + hit)
    assert planted["recompile_limit_hits"] == ["config.recompile_limit (8)"] and planted["graph_breaks"] == 1
    assert dynamo_recompiles(SESSION_17_LOG.split("\n", 1)[1])["logged"] is False

