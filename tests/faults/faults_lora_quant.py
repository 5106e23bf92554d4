"""Planted regressions of §1 (LoRA) and §2 (4-bit) in the libraries the recipe runs: PEFT's adapters,
bitsandbytes' NF4 and transformers' quantizer and Gemma 3 config. Each is a runtime patch of a library, never of
this project's measuring code, and turns exactly its claim red in a run of the claim's test file."""

from __future__ import annotations

from fault import Fault

LORA = "tests/claims/test_lora.py"
QUANT = "tests/claims/test_quantization.py"


def _merge_scale_differs():
    """PEFT's merge (get_delta_weight) applies the rsLoRA factor α/√r while the forward keeps α/r: merged weights no
    longer equal the model that was trained."""
    import math

    from peft.tuners.lora import bnb, layer

    classes = [layer.Linear] + [getattr(bnb, name) for name in ("Linear8bitLt", "Linear4bit") if hasattr(bnb, name)]
    for cls in classes:
        original = cls.get_delta_weight

        def get_delta_weight(self, adapter, *args, _original=original, **kwargs):
            return _original(self, adapter, *args, **kwargs) * math.sqrt(self.r[adapter])

        cls.get_delta_weight = get_delta_weight


def _lora_b_gains_bias():
    """Every lora_B gains a zero-initialised, trainable bias (as if `lora_bias` flipped on for the parameters but not
    for merging): the adapters start as before, but r·(in+out) no longer counts what trains."""
    import torch
    from peft.tuners.lora import layer

    original = layer.LoraLayer.update_layer

    def update_layer(self, adapter_name, *args, **kwargs):
        original(self, adapter_name, *args, **kwargs)
        lora_b = self.lora_B[adapter_name] if adapter_name in self.lora_B else None
        if isinstance(lora_b, torch.nn.Linear) and lora_b.bias is None:
            lora_b.bias = torch.nn.Parameter(torch.zeros(lora_b.out_features, device=lora_b.weight.device,
                                                         dtype=lora_b.weight.dtype))

    layer.LoraLayer.update_layer = update_layer


def _down_proj_left_unquantized():
    """transformers' 4-bit quantizer skips down_proj (a default skip list that grew): 108 of 126 projections are
    Linear4bit, the 18 down_proj stay bf16."""
    import transformers

    original = transformers.BitsAndBytesConfig.post_init

    def post_init(self):
        self.llm_int8_skip_modules = list(self.llm_int8_skip_modules or []) + ["down_proj"]
        original(self)

    transformers.BitsAndBytesConfig.post_init = post_init


def _dequantize_large_through_bf16():
    """bitsandbytes' dequantize_4bit, for tensors of 2^20 elements or more (a new parallel path), writes through a
    bf16 buffer: each value is rounded to 8 significant bits after code × absmax. Smaller tensors are unchanged."""
    import bitsandbytes.functional as F
    import torch

    original = F.dequantize_4bit

    def dequantize_4bit(*args, **kwargs):
        out = original(*args, **kwargs)
        if out.numel() >= 2**20 and out.dtype == torch.float32:
            out = out.to(torch.bfloat16).to(torch.float32)
        return out

    F.dequantize_4bit = dequantize_4bit


def _nibbles_swapped():
    """bitsandbytes packs the two 4-bit codes of a byte in the other order (first code in the low nibble) and
    unpacks consistently: its own quantize → dequantize round trip is unchanged, the packed layout is not."""
    import bitsandbytes.functional as F

    quantize, dequantize = F.quantize_4bit, F.dequantize_4bit

    def swap(packed):
        return ((packed & 0x0F) << 4) | (packed >> 4)

    def quantize_4bit(*args, **kwargs):
        packed, state = quantize(*args, **kwargs)
        return swap(packed), state

    def dequantize_4bit(A, *args, **kwargs):
        return dequantize(swap(A), *args, **kwargs)

    F.quantize_4bit, F.dequantize_4bit = quantize_4bit, dequantize_4bit


def _gemma3_activation_silu():
    """transformers' Gemma3TextConfig ignores the stored hidden_activation and uses silu (a default that moved
    with a renamed key)."""
    from transformers.models.gemma3 import configuration_gemma3

    cls = configuration_gemma3.Gemma3TextConfig
    original = cls.__post_init__

    def post_init(self, **kwargs):
        self.hidden_activation = "silu"
        original(self, **kwargs)

    cls.__post_init__ = post_init


FAULTS = [
    Fault("lora-merge-scale-rslora", "1", "PEFT's merge scales by α/√r while the forward uses α/r", "LORA-DELTA", (LORA,),
          _merge_scale_differs),
    Fault("lora-b-bias-trained", "1", "every lora_B gains a trainable (zero-initialised) bias", "LORA-PARAMS", (LORA,),
          _lora_b_gains_bias),
    Fault("nf4-down-proj-unquantized", "2", "the 4-bit quantizer leaves down_proj in bf16", "NF4-LOAD", (QUANT,),
          _down_proj_left_unquantized),
    Fault("nf4-dequant-large-bf16", "2", "dequantize_4bit rounds tensors of ≥ 2^20 elements to bf16", "NF4-ROUNDTRIP",
          (QUANT,), _dequantize_large_through_bf16),
    Fault("nf4-nibbles-swapped", "2", "bitsandbytes packs the two codes of a byte in swapped order", "NF4-REFERENCE",
          (QUANT,), _nibbles_swapped),
    Fault("gemma3-activation-silu", "2", "Gemma 3's config activation becomes silu", "GC-ACTIVATION", (QUANT,),
          _gemma3_activation_silu),
]
