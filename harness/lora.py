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


def delta_facts(model, input_ids: torch.Tensor, seed: int = 0) -> dict:
    """Give every B random values, then compare merged − base with (α/r)·B·A and the adapted forward
    with base + (α/r)·x·Aᵀ·Bᵀ on every adapted module (float32 on CPU)."""
    gen = torch.Generator().manual_seed(seed)
    modules = lora_modules(model)
    with torch.no_grad():
        for module in modules.values():
            b = module.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.02)
    merge_err = forward_err = unscaled_err = 0.0
    x_by_module: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        base = _base_layer(module)
        a, b = module.lora_A["default"].weight.detach().float(), module.lora_B["default"].weight.detach().float()
        scaling = module.scaling["default"]
        expected = (scaling * b @ a).detach()
        with torch.no_grad():
            w0 = base.weight.detach().float().clone()
            module.merge(adapter_names=["default"])
            merged = base.weight.detach().float().clone()
            module.unmerge()
            x = torch.randn((3, base.in_features), generator=gen)
            x_by_module[name] = x
            adapted_out = module(x.to(base.weight.dtype)).float()
            base_out = torch.nn.functional.linear(x, w0, None if base.bias is None else base.bias.float())
        merge_err = max(merge_err, float((merged - w0 - expected).abs().max()))
        unscaled_err = max(unscaled_err, float((merged - w0 - b @ a).abs().max()))
        forward_err = max(forward_err, float((adapted_out - (base_out + scaling * x @ a.T @ b.T)).abs().max()))
    dtype = str(next(iter(modules.values())).lora_A["default"].weight.dtype).removeprefix("torch.")
    return {"merge_err": merge_err, "forward_err": forward_err, "unscaled_err": unscaled_err, "tol": 1e-5,
            "dtype": dtype, "modules": len(modules)}
