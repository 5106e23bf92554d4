"""bitsandbytes 4-bit loading as the recipe asks for it, and facts read from the quantized model."""

from __future__ import annotations

import torch

from harness.recipe import HANDBOOK


def bnb_config():
    """NF4 with double quantization and bf16 compute: what `load_in_4bit=True` means in Unsloth."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["lm_head"])


def load_4bit(model_dir, device_map="cpu"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=bnb_config(),
                                                dtype=torch.bfloat16, device_map=device_map)


def linear4bit_modules(model) -> dict:
    import bitsandbytes as bnb

    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def load_facts(model, targets=HANDBOOK.target_modules) -> dict:
    """NF4-LOAD measurements: which projections are Linear4bit, their quant type and compute dtype."""
    q = linear4bit_modules(model)
    projections = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in targets and ".lora_" not in n
                   and "base_layer" not in n]
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    return {
        "adapted_projections": len(projections),
        "linear4bit": sum(1 for n in q if n.rsplit(".", 1)[-1] in targets or n.endswith("base_layer")),
        "quant_types": sorted({m.weight.quant_state.quant_type for m in q.values()}),
        "compute_dtypes": sorted({str(m.compute_dtype).removeprefix("torch.") for m in q.values()}),
        "embed_quantized": type(embed.weight).__name__ == "Params4bit",
        "lm_head_quantized": head is not None and type(head.weight).__name__ == "Params4bit",
        "embed_dtype": str(embed.weight.dtype).removeprefix("torch."),
    }


def double_quant_facts(model) -> dict:
    """NF4-DOUBLE-QUANT measurements from every Linear4bit's quant state: the bytes the model stores for its
    quantized weights (packed codes, absmax, nested absmax), per parameter, and the padding of partial blocks."""
    modules = list(linear4bit_modules(model).values())
    states = [m.weight.quant_state for m in modules]
    params = sum(s.shape.numel() for s in states)
    stored = constants = 0
    for m in modules:
        s = m.weight.quant_state
        stored += m.weight.numel() * m.weight.element_size()  # packed codes
        stored += s.absmax.numel() * s.absmax.element_size()
        # per-tensor constants, reported apart: the 16-entry code map, and with nesting the offset and 8-bit map
        constants += s.code.numel() * s.code.element_size()
        if s.nested:
            stored += s.state2.absmax.numel() * s.state2.absmax.element_size()
            constants += 4 + s.state2.code.numel() * s.state2.code.element_size()
    blocks = sum(-(-s.shape.numel() // s.blocksize) for s in states)
    nested_blocks = sum(-(-(-(-s.shape.numel() // s.blocksize)) // s.state2.blocksize) for s in states if s.nested)
    formula = params / 2 + blocks * 1 + nested_blocks * 4  # 4-bit codes, 8-bit absmax, fp32 per 256 absmax
    return {
        "nested": all(s.nested for s in states), "modules": len(states),
        "blocksize": sorted({s.blocksize for s in states})[0],
        "nested_blocksize": sorted({s.state2.blocksize for s in states if s.nested} or {0})[0],
        "absmax_dtype": sorted({str(s.absmax.dtype).removeprefix("torch.") for s in states})[0],
        "quantized_params": params, "quantized_bytes": stored, "formula_bytes": formula,
        "measured_bits_per_param": round(8 * stored / params, 6),
        "padding_params": sum(-(-s.shape.numel() // s.blocksize) * s.blocksize - s.shape.numel() for s in states),
        "nested_padding_absmax": sum(-(-(-(-s.shape.numel() // s.blocksize)) // s.state2.blocksize) * s.state2.blocksize
                                     - (-(-s.shape.numel() // s.blocksize)) for s in states if s.nested),
        "per_tensor_constant_bytes": constants,
    }
