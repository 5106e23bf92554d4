"""harness.malloc_policy: a CPU fine-tune started from the CLI keeps the memory its steps free."""

import sys
from types import SimpleNamespace

import pytest

from harness import malloc_policy


def test_glibc_takes_both_settings():
    """In a child: this pytest process must not keep its freed memory for the rest of the session."""
    import subprocess

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    proc = subprocess.run([sys.executable, "-c", "from harness.malloc_policy import keep_freed_memory as k; "
                                                 "print(k())"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "True", proc.stderr


class _Stop(Exception):
    pass


@pytest.mark.parametrize("setting, called", [(None, True), ("0", False)])
def test_the_cli_keeps_freed_memory_on_a_cpu_unless_told_not_to(monkeypatch, setting, called):
    """Planted: without the call in cmd_finetune the CPU run faults its logits in afresh every step (70.3 s instead of
    58.1 s for the tiny reference run on 2 cores)."""
    import torch

    from harness import cli, finetune

    calls = []
    monkeypatch.setattr(malloc_policy, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(finetune, "finetune", lambda **kw: (_ for _ in ()).throw(_Stop()))
    monkeypatch.delenv("HARNESS_FAULT", raising=False)
    if setting is None:
        monkeypatch.delenv("HARNESS_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("HARNESS_KEEP_FREED_MEMORY", setting)
    args = SimpleNamespace(model="tiny", backend="hf", out=None, max_steps=1, batch_size=1, eval_limit=1, wandb=False,
                           no_export=True, no_base_eval=True, arm="handbook", seed=None, base_eval_only=False)
    with pytest.raises(_Stop):
        cli.cmd_finetune(args)
    assert calls == ([1] if called else [])


def test_not_on_a_gpu(monkeypatch):
    import torch

    from harness import cli, finetune

    calls = []
    monkeypatch.setattr(malloc_policy, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(finetune, "finetune", lambda **kw: (_ for _ in ()).throw(_Stop()))
    monkeypatch.delenv("HARNESS_FAULT", raising=False)
    args = SimpleNamespace(model="tiny", backend="hf", out=None, max_steps=1, batch_size=1, eval_limit=1, wandb=False,
                           no_export=True, no_base_eval=True, arm="handbook", seed=None, base_eval_only=False)
    with pytest.raises(_Stop):
        cli.cmd_finetune(args)
    assert calls == []
