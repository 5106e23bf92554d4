"""LoRA as the recipe configures it, and measurements of what PEFT (or Unsloth) actually built."""

from __future__ import annotations

import torch

from harness.recipe import HANDBOOK, Recipe


def lora_config(recipe: Recipe = HANDBOOK, target_modules=None):
    from peft import LoraConfig

    return LoraConfig(r=recipe.r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout, bias="none",
                      target_modules=list(target_modules or recipe.target_modules), task_type="CAUSAL_LM")


def apply_lora(model, recipe: Recipe = HANDBOOK, target_modules=None):
    """Wrap a causal LM with the recipe's LoRA adapters (plain PEFT, as the `hf` backend does)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(recipe, target_modules))


def lora_modules(model) -> dict[str, torch.nn.Module]:
    """The adapted modules by name (PEFT LoraLayer instances holding the 'default' adapter)."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def _base_layer(module):
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module.base_layer


def adapter_facts(model, recipe: Recipe = HANDBOOK) -> dict:
    """Shapes, scalings, targets and parameter counts of the adapters, read from the model itself."""
    modules = lora_modules(model)
    adapters, scalings = [], []
    for name, module in modules.items():
        base = _base_layer(module)
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        adapters.append({"name": name, "a_shape": list(a.shape), "b_shape": list(b.shape),
                         "in_features": base.in_features, "out_features": base.out_features})
        scalings.append(float(module.scaling["default"]))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # 4-bit weights pack two values per byte: count the logical parameters of each quantized tensor once
    # (PEFT's LoRA wrapper exposes its base layer's weight too, so walk parameters, not modules).
    total = sum(_logical_numel(p) for p in model.parameters())
    config = model.config if hasattr(model, "config") else model.base_model.config
    return {
        "r": recipe.r, "lora_alpha": recipe.lora_alpha, "adapters": adapters, "scalings": scalings,
        "layers": config.num_hidden_layers, "adapted": list(modules),
        "trainable_other": [n for n in trainable if "lora_" not in n],
        "trainable": sum(trainable.values()), "total": total,
        "expected_from_shapes": sum(recipe.r * (a["in_features"] + a["out_features"]) for a in adapters),
    }


def _logical_numel(param) -> int:
    state = getattr(param, "quant_state", None)
    if type(param).__name__ == "Params4bit" and state is not None:
        return state.shape.numel()
    return param.numel()


def init_facts(model, input_ids: torch.Tensor) -> dict:
    """B at init and the logits with adapters on vs off, on the same input."""
    modules = lora_modules(model)
    b_max = max(float(m.lora_B["default"].weight.detach().abs().max()) for m in modules.values())
    with torch.no_grad():
        adapted = model(input_ids=input_ids).logits.float()
        with model.disable_adapter():
            base = model(input_ids=input_ids).logits.float()
    return {"b_max_abs": b_max, "logits_max_abs_diff": float((adapted - base).abs().max()), "modules": len(modules)}


def _dense_weight(base) -> torch.Tensor:
    """The base layer's weight as float32; a bitsandbytes Params4bit is dequantized (its stored bytes are packed codes)."""
    weight = base.weight
    if type(weight).__name__ == "Params4bit":
        import bitsandbytes.functional as F

        return F.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.detach().float()


def delta_facts(model, recipe: Recipe = HANDBOOK, seed: int = 0, *, b_std: float = 0.02, x_std: float = 1.0,
                merge_tol: float = 1e-5, forward_tol: float = 1e-5) -> dict:
    """Give every B random values (N(0, b_std²)), then compare, module by module, merged − base with s·B·A and the
    adapted forward with base + s·x·Aᵀ·Bᵀ, where s = lora_alpha / r is the RECIPE's factor (never PEFT's own
    `module.scaling`, which a scaling regression would move together with the merge). B is restored afterwards.

    Dense base layers (float32 on the CPU) are merged and unmerged in place. A 4-bit base layer (Linear4bit) is not:
    PEFT's merge re-quantizes the merged weight to NF4, adding up to 0.1519·absmax per element, which is not LoRA's
    arithmetic; its merge is measured on a copy instead, as PEFT builds it: dequantized W + `get_delta_weight`.
    The forward runs in the base layer's compute dtype (bf16 for Linear4bit) with x ~ N(0, x_std²).
    """
    scale = recipe.lora_alpha / recipe.r
    gen = torch.Generator().manual_seed(seed)
    modules = lora_modules(model)
    saved_b = {name: module.lora_B["default"].weight.detach().clone() for name, module in modules.items()}
    merge_err = forward_err = unscaled_err = output_max = delta_max = 0.0
    peft_scalings, quantized = set(), 0
    try:
        with torch.no_grad():
            for module in modules.values():
                b = module.lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=gen) * b_std)
        for module in modules.values():
            base = _base_layer(module)
            a, b = module.lora_A["default"].weight.detach().float(), module.lora_B["default"].weight.detach().float()
            peft_scalings.add(float(module.scaling["default"]))
            expected = scale * (b @ a)
            four_bit = type(base.weight).__name__ == "Params4bit"
            quantized += four_bit
            with torch.no_grad():
                w0 = _dense_weight(base)
                if four_bit:
                    merged = w0 + module.get_delta_weight("default").float()
                    dtype = getattr(base, "compute_dtype", None) or torch.bfloat16
                else:
                    module.merge(adapter_names=["default"])
                    merged = base.weight.detach().float().clone()
                    module.unmerge()
                    dtype = base.weight.dtype
                x = torch.randn((1, 4, base.in_features), generator=gen) * x_std
                x = x.to(device=a.device, dtype=dtype)
                adapted_out = module(x).float()
                base_out = base(x).float() if four_bit else torch.nn.functional.linear(
                    x.float(), w0, None if base.bias is None else base.bias.float())
            xf = x.float()
            output_max = max(output_max, float(adapted_out.abs().max()))
            delta_max = max(delta_max, float(expected.abs().max()))
            merge_err = max(merge_err, float((merged - w0 - expected).abs().max()))
            unscaled_err = max(unscaled_err, float((merged - w0 - b @ a).abs().max()))
            forward_err = max(forward_err, float((adapted_out - (base_out + scale * xf @ a.T @ b.T)).abs().max()))
    finally:
        with torch.no_grad():
            for name, module in modules.items():
                module.lora_B["default"].weight.copy_(saved_b[name])
    first = next(iter(modules.values()))
    return {"merge_err": merge_err, "forward_err": forward_err, "unscaled_err": unscaled_err,
            "merge_tol": merge_tol, "forward_tol": forward_tol, "recipe_scaling": scale,
            "peft_scaling": sorted(peft_scalings), "b_std": b_std, "x_std": x_std,
            "output_max_abs": output_max, "delta_max_abs": delta_max,
            "dtype": str(first.lora_A["default"].weight.dtype).removeprefix("torch."),
            "quantized_base_layers": quantized, "modules": len(modules)}
