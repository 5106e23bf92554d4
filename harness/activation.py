"""GC-ACTIVATION-RUNTIME: the function Gemma 3's MLP actually executes, not the string its config holds.

GC-ACTIVATION reads `config.hidden_activation`; transformers once ran exact GELU for Gemma while the config asked for
the tanh approximation (transformers #29402/#29729), which a config check cannot see. Here the model transformers builds
from the checkpoint's config is asked: its first decoder layer's MLP (with the checkpoint's weights) runs on probe
hidden states while a hook records what its `act_fn` receives and returns, and the `act_fn` runs on a grid over
[-8, 8]. Both are compared with the candidate functions; the one that matches is what executes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

CANDIDATES = {
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_erf": lambda x: torch.nn.functional.gelu(x),
    "silu": torch.nn.functional.silu,
    "relu": torch.relu,
}


def _gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), written out (float64), independent of torch's kernel."""
    x = x.double()
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


@torch.no_grad()
def mlp_activation_facts(checkpoint: Path, layer: int = 0, tokens: int = 64, seed: int = 0) -> dict:
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(checkpoint))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    mlp = model.model.layers[layer].mlp
    mlp.to_empty(device="cpu")
    prefix = f"model.layers.{layer}.mlp."
    with safe_open(str(Path(checkpoint) / "model.safetensors"), "pt") as weights:
        for name, param in mlp.named_parameters():
            param.copy_(weights.get_tensor(prefix + name).float())
    mlp.float().eval()

    seen = {}
    handle = mlp.act_fn.register_forward_hook(lambda module, args, out: seen.update(inp=args[0].detach(), out=out.detach()))
    try:
        g = torch.Generator().manual_seed(seed)
        hidden = torch.randn(1, tokens, config.hidden_size, generator=g)
        out = mlp(hidden)
    finally:
        handle.remove()
    grid = torch.linspace(-8.0, 8.0, 4001)
    on_grid = mlp.act_fn(grid)
    facts = {"act_fn_class": type(mlp.act_fn).__name__, "config_hidden_activation": config.hidden_activation,
             "layer": layer, "probe_tokens": tokens, "grid": "[-8, 8], 4001 points",
             "act_fn_called": bool(seen)}
    if not seen:
        return facts
    errors = {}
    for name, fn in CANDIDATES.items():
        errors[name] = max(float((seen["out"] - fn(seen["inp"])).abs().max()), float((on_grid - fn(grid)).abs().max()))
    facts["max_abs_err_vs"] = {k: float(f"{v:.3g}") for k, v in errors.items()}
    facts["executes"] = min(errors, key=errors.get)
    facts["err_vs_gelu_tanh"] = errors["gelu_tanh"]
    facts["err_vs_gelu_tanh_formula"] = float((on_grid.double() - _gelu_tanh_formula(grid)).abs().max())
    # The distance between the two GELUs on the same inputs: what the probe must resolve.
    facts["gelu_tanh_vs_erf_on_probe"] = max(float((CANDIDATES["gelu_tanh"](t) - CANDIDATES["gelu_erf"](t)).abs().max())
                                             for t in (seen["inp"], grid))
    # The whole MLP against down(gelu_tanh(gate x) · up x), written out.
    expected = mlp.down_proj(CANDIDATES["gelu_tanh"](mlp.gate_proj(hidden)) * mlp.up_proj(hidden))
    facts["mlp_vs_gelu_tanh_mlp_max_abs"] = float((out - expected).abs().max())
    facts["mlp_output_max_abs"] = float(out.abs().max())
    return facts
