"""Handbook §2 on the CPU: bitsandbytes NF4 (it runs on CPU), the reference NF4, and the model config."""

import pytest
import torch

from harness.nf4_compare import formula, reference_vs_bnb, roundtrip


def real_weights(model_dir, names) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {n: f.get_tensor(n).float() for n in names}


REAL = [f"model.layers.{i}.{part}.weight" for i in (0, 17)
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


@pytest.fixture(scope="module")
def n01():
    return torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def gemma_4bit(gemma_dir):
    from harness.quant import load_4bit

    return load_4bit(gemma_dir)


@pytest.mark.claim("NF4-LOAD")
def test_recipe_loads_projections_as_nf4_linear4bit(gemma_4bit, certify):
    """The recipe's BitsAndBytesConfig makes all 126 projections nf4 Linear4bit; embeddings stay bf16."""
    from harness.quant import load_facts

    certify("NF4-LOAD", load_facts(gemma_4bit), "gemma3-270m")


@pytest.mark.claim("NF4-DOUBLE-QUANT")
def test_double_quantization_is_on_and_costs_4_127_bits(gemma_4bit, certify):
    """Every quant state is nested (64 / 256, 8-bit absmax) and the stored bytes match 4.127 bits/param."""
    from harness.quant import double_quant_facts

    certify("NF4-DOUBLE-QUANT", double_quant_facts(gemma_4bit), "gemma3-270m")


@pytest.mark.claim("NF4-ROUNDTRIP")
def test_nf4_roundtrip_error_is_within_half_the_widest_code_gap(n01, gemma_dir, certify, run_extras):
    """quantize→dequantize keeps every element within 0.1519·absmax, on N(0,1) and real Gemma 3 weights."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(n01, blocksize=64, quant_type="nf4")
    ratio = ((n01 - F.dequantize_4bit(packed, state)).abs().reshape(-1, 64) / state.absmax.view(-1, 1)).reshape(-1)
    counts = torch.histc(ratio, bins=16, min=0.0, max=0.16)
    run_extras["nf4_error_hist"] = {"edges": [0.01 * i for i in range(16)], "shares": (counts / counts.sum()).tolist()}
    certify("NF4-ROUNDTRIP", roundtrip(n01, real_weights(gemma_dir, REAL)), "cpu")


@pytest.mark.claim("NF4-FORMULA")
def test_nf4_is_a_normal_quantile_codebook_not_uniform_rounding(n01, certify):
    """NF4's 16 codes are not round(W/S)'s uniform grid, and they fit N(0,1) better."""
    outcome = certify("NF4-FORMULA", formula(n01), "cpu")
    assert outcome.evidence["nf4_mean_abs_err"] < outcome.evidence["uniform_round_mean_abs_err"]


@pytest.mark.claim("NF4-REFERENCE")
def test_reference_nf4_reproduces_bitsandbytes(gemma_dir, certify):
    """The project's NF4 gives bitsandbytes' packed codes and dequantized values bit for bit."""
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(256, 256, generator=g), torch.randn(1000, 37, generator=g) * 0.02]
    tensors += list(real_weights(gemma_dir, REAL[:2]).values())
    certify("NF4-REFERENCE", reference_vs_bnb(tensors), "cpu")


@pytest.mark.claim("GC-ACTIVATION")
def test_gemma3_mlp_activation_is_gelu_tanh_not_silu(gemma_dir, certify):
    """The model config and the MLP module both say gelu_pytorch_tanh."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(gemma_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    act = model.model.layers[0].mlp.act_fn
    certify("GC-ACTIVATION", {"hidden_activation": config.hidden_activation, "mlp_act_fn": type(act).__name__,
                              "mlp_forward": "down_proj(act_fn(gate_proj(x)) * up_proj(x))"}, "gemma3-270m")
