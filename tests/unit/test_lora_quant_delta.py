"""LORA-DELTA's measurement on a 4-bit base (the GPU tier's arithmetic, emulated on the CPU): bitsandbytes Linear4bit
with bf16 compute under PEFT, on the embedded Gemma 3 270M. The GPU tolerances hold, a wrong scale fails, B is restored."""

import pytest
import torch

import spec
from spec.core import evaluate


@pytest.fixture(scope="module")
def gemma_4bit_lora(gemma_dir):
    from harness.lora import apply_lora
    from harness.quant import load_4bit

    torch.manual_seed(0)
    return apply_lora(load_4bit(gemma_dir))


def test_nf4_bf16_delta_is_within_the_gpu_tolerances(gemma_4bit_lora):
    """126 Linear4bit modules: merge (dequantized W + get_delta_weight, on a copy) and bf16 forward agree with the
    recipe's α/r within LORA-DELTA's GPU bounds (measured 6e-8 and 1.5e-2); the unscaled B·A misses by ~0.8."""
    from harness.lora import delta_facts

    facts = delta_facts(gemma_4bit_lora, b_std=1.0, x_std=0.1, merge_tol=2e-2, forward_tol=5e-2)
    assert facts["quantized_base_layers"] == facts["modules"] == 126
    outcome = evaluate(spec.CLAIMS["LORA-DELTA"], facts, "gpu")
    assert not outcome.regression, outcome.explain()
    assert facts["unscaled_err"] > 0.5 and facts["output_max_abs"] < 8
    assert max(float(m.lora_B["default"].weight.detach().abs().max()) for m in _lora(gemma_4bit_lora)) == 0.0


def test_nf4_bf16_delta_fails_against_another_scale(gemma_4bit_lora):
    """A recipe whose α/r is 1 while PEFT applies 2: the same measurement turns LORA-DELTA red."""
    from harness.lora import delta_facts
    from harness.recipe import HANDBOOK

    facts = delta_facts(gemma_4bit_lora, HANDBOOK.with_(lora_alpha=32), b_std=1.0, x_std=0.1, merge_tol=2e-2,
                        forward_tol=5e-2)
    outcome = evaluate(spec.CLAIMS["LORA-DELTA"], facts, "gpu")
    assert outcome.verdict == "fail" and outcome.regression


def _lora(model):
    from harness.lora import lora_modules

    return lora_modules(model).values()
