"""The suite's readers of library state on the older Hugging Face stack that unsloth 2026.9.14 declares
(transformers 5.5.0, trl 0.24.0; the CPU leg of 2026-11-28): each reads what that release holds the way the release
itself uses it, and a real difference stays visible."""

from collections import defaultdict
from types import SimpleNamespace

import pytest

from harness.masking import trl_truncated


def _trainer(columns: dict):
    datasets = pytest.importorskip("datasets")
    return SimpleNamespace(train_dataset=datasets.Dataset.from_dict(columns))


def test_trl_labels_are_read_from_the_assistant_mask_where_trl_keeps_no_labels():
    """trl 0.24.0's prepared rows carry `assistant_masks`; its collator trains the ids where the mask is 1 (-100
    elsewhere). Read by that rule; where a `labels` column exists (trl 1.15), it is read as it is."""
    old = _trainer({"case": [0, 1], "input_ids": [[2, 5, 6, 7], [2, 8, 9]], "assistant_masks": [[0, 0, 1, 1], [0, 1, 0]]})
    assert trl_truncated(old, [0, 1], None) == {0: ([2, 5, 6, 7], [-100, -100, 6, 7]), 1: ([2, 8, 9], [-100, 8, -100])}
    new = _trainer({"case": [0], "input_ids": [[2, 5, 6]], "labels": [[-100, 5, 6]], "assistant_masks": [[0, 0, 1]]})
    assert trl_truncated(new, [0], None) == {0: ([2, 5, 6], [-100, 5, 6])}  # TRL's own labels win


def _fidelity_with(**trainer_args):
    from harness.finetune import fidelity  # imports torch and transformers: at call, not when the suite is collected

    args = SimpleNamespace(**{"learning_rate": 1e-3, "lr_scheduler_type": "cosine", "warmup_steps": 200,
                              "max_steps": 600, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                              "max_length": 512, "seed": 3407, "gradient_checkpointing": True, "max_grad_norm": 1.0,
                              **trainer_args})
    model = SimpleNamespace(is_loaded_in_4bit=False)
    return fidelity(SimpleNamespace(args=args), model, defaultdict(list), {"learning_rate": 1e-3})  # only `silent` read


def test_an_unset_deprecated_warmup_ratio_is_not_a_silent_default_but_a_set_one_is():
    """transformers 5.5's TrainingArguments keeps a deprecated warmup_ratio (None = unset; a value is copied into
    warmup_steps); 5.17 has none. Its None is no default the run trains with; a value would change the warmup."""
    assert "warmup_ratio" not in _fidelity_with(warmup_ratio=None)["silent"]
    assert _fidelity_with(warmup_ratio=0.1)["silent"]["warmup_ratio"] == 0.1
    assert _fidelity_with(max_grad_norm=None)["silent"]["max_grad_norm"] is None  # other None values stay visible


def _accumulation_as_recorded(leg: str) -> dict:
    import json
    from pathlib import Path

    path = (Path(__file__).resolve().parents[2] / "reports/examples/legs-2026-11-28-hf-stack-a229e7c/legs" / leg
            / "results.json")
    claim = next(c for c in json.loads(path.read_text())["claims"] if c["id"] == "ACCUM-EQUIVALENCE")
    return claim["evidence"]["tiny"]


def test_accumulation_is_red_where_transformers_divides_the_loss_twice():
    """ACCUM-EQUIVALENCE replayed on the two stored legs: transformers 5.5.3 hands Accelerate num_steps =
    gradient_accumulation_steps while the Trainer divides the loss too (the accumulated gradient is half: relative L2
    0.5); 5.5.4 passes num_steps=1 and the two gradients agree."""
    import spec
    from spec.core import evaluate

    double = evaluate(spec.CLAIMS["ACCUM-EQUIVALENCE"], _accumulation_as_recorded("transformers-5.5.3"), "tiny")
    assert double.regression and double.evidence["grad_rel_l2"] == pytest.approx(0.5, abs=1e-6), double.explain()
    fixed = evaluate(spec.CLAIMS["ACCUM-EQUIVALENCE"], _accumulation_as_recorded("transformers-5.5.4"), "tiny")
    assert not fixed.regression, fixed.explain()
