"""Handbook §1 on the CPU: PEFT with the recipe's LoRA values on `tiny`, and the full 270M on the meta device."""

import pytest
import torch

from harness.lora import adapter_facts, apply_lora, delta_facts, init_facts


@pytest.fixture(scope="module")
def tiny_lora(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    return apply_lora(base)


@pytest.fixture(scope="module")
def gemma_meta_lora(gemma_dir):
    """Gemma 3 270M's real architecture with the recipe's adapters, built on the meta device (no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(gemma_dir))
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    return apply_lora(base)


INPUT = torch.tensor([[2, 105, 2364, 107, 818, 5279, 529, 7001, 563, 106, 107]])


@pytest.mark.claim("LORA-RANK")
def test_every_adapter_has_rank_32_in_peft_orientation(tiny_lora, gemma_meta_lora, certify):
    """lora_A is (32, in) and lora_B is (out, 32) on every adapted module."""
    certify("LORA-RANK", adapter_facts(tiny_lora), "tiny")
    certify("LORA-RANK", adapter_facts(gemma_meta_lora), "gemma3-270m")


@pytest.mark.claim("LORA-SCALING")
def test_update_is_scaled_by_alpha_over_r(tiny_lora, certify):
    """Every adapter multiplies its update by lora_alpha / r = 2.0."""
    certify("LORA-SCALING", adapter_facts(tiny_lora), "tiny")


@pytest.mark.claim("LORA-INIT")
def test_adapters_start_as_the_identity(tiny_lora, certify):
    """B is zero at init, so the adapted model's logits equal the base model's exactly."""
    certify("LORA-INIT", init_facts(tiny_lora, INPUT), "tiny")


@pytest.mark.claim("LORA-DELTA")
def test_merged_delta_is_scaled_b_times_a(tiny_dir, certify):
    """merged − base == (α/r)·B·A and the adapted forward == base + (α/r)·x·Aᵀ·Bᵀ, module by module, with α/r
    taken from the recipe (HANDBOOK), not from the scaling PEFT stored on each module."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32))
    certify("LORA-DELTA", delta_facts(model), "tiny")


@pytest.mark.claim("LORA-TARGETS")
def test_exactly_the_seven_projections_of_every_layer(tiny_lora, gemma_meta_lora, certify):
    """q, k, v, o, gate, up, down of every decoder layer are adapted, nothing else; only adapters train."""
    certify("LORA-TARGETS", adapter_facts(tiny_lora), "tiny")
    certify("LORA-TARGETS", adapter_facts(gemma_meta_lora), "gemma3-270m")


@pytest.mark.claim("LORA-PARAMS")
def test_trainable_parameters_are_sum_of_r_times_in_plus_out(tiny_lora, gemma_meta_lora, certify):
    """Trainable == Σ r·(in+out) == 7,593,984 on Gemma 3 270M."""
    certify("LORA-PARAMS", adapter_facts(tiny_lora), "tiny")
    certify("LORA-PARAMS", adapter_facts(gemma_meta_lora), "gemma3-270m")
