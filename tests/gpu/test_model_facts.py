"""The GPU tier's model facts: Unsloth's 4-bit load and its LoRA adapters (NF4, LoRA claims on CUDA)."""

import copy

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.claim("NF4-LOAD", "NF4-DOUBLE-QUANT")
def test_unsloth_loads_nf4_with_double_quant(unsloth_model, certify):
    """FastModel.from_pretrained(load_in_4bit=True): nf4 Linear4bit, bf16 compute, nested quant states."""
    from harness.quant import double_quant_facts, load_facts

    model, _ = unsloth_model
    certify("NF4-LOAD", load_facts(model), "gemma3-270m")
    certify("NF4-DOUBLE-QUANT", double_quant_facts(model), "gpu")


@pytest.mark.claim("NF4-ROUNDTRIP")
def test_unsloth_quant_states_roundtrip_within_bound(unsloth_model, gemma_dir, certify):
    """The loaded model's own quant states dequantize to within the NF4 bound of the bf16 checkpoint."""
    import bitsandbytes.functional as F
    from safetensors import safe_open

    from harness.nf4_compare import roundtrip
    from harness.quant import linear4bit_modules

    from spec.quantization import NF4_MAX_ERR_OVER_ABSMAX

    model, _ = unsloth_model
    # The first 14 quantized projections, each with its bf16 weight from the checkpoint (read once).
    pairs = {}
    with safe_open(str(gemma_dir / "model.safetensors"), "pt") as f:
        for name, module in list(linear4bit_modules(model).items())[:14]:
            key = name.replace("base_model.model.", "").replace(".base_layer", "") + ".weight"
            if key in f.keys():
                pairs[key] = (module, f.get_tensor(key).float())
    n01 = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    facts = roundtrip(n01, {key: w for key, (_, w) in pairs.items()})
    # and the model's own stored state: dequantized vs the checkpoint
    worst = 0.0
    for module, w in pairs.values():
        w = w.cuda()
        # Dequantize to float32: the state's own dtype (bf16) would add bf16 rounding (up to 2^-9·|w|) to the
        # NF4 error (seen on the H100, 2026-11-26: 3.2e-4 over the bound with bf16 output).
        state = copy.copy(module.weight.quant_state)
        state.dtype = torch.float32
        back = F.dequantize_4bit(module.weight.data, state).float()
        absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
        used = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        excess = (back - w).reshape(-1, 64).abs() - (NF4_MAX_ERR_OVER_ABSMAX * absmax + (absmax - used.view(-1, 1)).abs()
                                                     + 1e-3 * absmax)
        worst = max(worst, float(excess.max()))
    facts["model_state_excess_over_bound"] = worst
    certify("NF4-ROUNDTRIP", facts, "gpu")


@pytest.mark.claim("LORA-RANK", "LORA-SCALING", "LORA-TARGETS", "LORA-PARAMS", "LORA-INIT")
def test_unsloth_lora_matches_the_recipe(unsloth_model, certify):
    """get_peft_model(r=32, alpha=64, 7 targets): shapes, scaling 2.0, 126 modules, 7,593,984 trainable, B = 0."""
    from harness.lora import adapter_facts, init_facts

    model, _ = unsloth_model
    facts = adapter_facts(model)
    for claim in ("LORA-RANK", "LORA-SCALING", "LORA-TARGETS", "LORA-PARAMS"):
        certify(claim, facts, "gemma3-270m", soft=True)
    ids = torch.tensor([[2, 105, 2364, 107, 818, 5279, 529, 7001, 563, 106, 107]], device="cuda")
    certify("LORA-INIT", init_facts(model, ids), "gpu", soft=True)
    certify.check()


@pytest.mark.claim("LORA-DELTA")
def test_unsloth_lora_delta_is_scaled_b_times_a(unsloth_model, certify):
    """On Unsloth's model (NF4 Linear4bit base, bf16 compute): PEFT's merge delta (dequantized W + get_delta_weight, on
    a copy: merging in place would re-quantize to NF4) == (α/r)·B·A, and the adapted forward == base forward +
    (α/r)·x·Aᵀ·Bᵀ, α/r from the recipe. Not yet run on a GPU.

    B ~ N(0, 1) and x ~ N(0, 0.1²) make the LoRA term O(1) against bf16 noise: a scale off by a factor 2 misses the
    merge by ~0.8, and outputs stay below ~4, where a bf16 ulp is 2^-6 (measured in the same arithmetic emulated with
    bitsandbytes on the CPU; the tolerances' derivation is at LORA-DELTA in spec/lora.py). delta_facts restores B,
    so LORA-INIT on this module-scoped model still sees B = 0."""
    from harness.lora import delta_facts

    model, _ = unsloth_model
    certify("LORA-DELTA", delta_facts(model, b_std=1.0, x_std=0.1, merge_tol=2e-2, forward_tol=5e-2), "gpu")
