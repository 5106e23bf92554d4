"""Gradient accumulation on the CPU: the hf backend's trainer, 2 x batch 4 against 1 x batch 8 on the same rows."""

import pytest

from harness.recipe import HANDBOOK


@pytest.mark.claim("ACCUM-EQUIVALENCE")
def test_accumulated_micro_batches_are_one_batch(tiny_dir, dataset, tmp_path, certify):
    """The first optimizer step's gradient (before clipping) and the logged gradient norm agree to float32 rounding;
    the lr of every optimizer step is the same in both runs and the scheduler steps once per optimizer step."""
    from datasets import disable_progress_bars

    from harness.accumulation import accumulation_facts

    disable_progress_bars()
    conversations = [ex.messages for ex in dataset["train"][:8]]
    facts = accumulation_facts(tiny_dir, HANDBOOK.with_(model="tiny"), conversations, tmp_path, accumulation=2, steps=2)
    certify("ACCUM-EQUIVALENCE", {**facts, "model": "tiny", "backend": "hf/cpu"}, "tiny")
