"""What Gemma 3's MLP executes at runtime (GC-ACTIVATION reads the config string; this runs the function)."""

import pytest


@pytest.mark.claim("GC-ACTIVATION-RUNTIME")
def test_the_mlp_executes_gelu_tanh(gemma_dir, certify):
    """The embedded 270M's first MLP, built by transformers from its config with its weights: what its act_fn returns
    on probe hidden states and on a grid is GELU (tanh approximation), and so is the whole MLP's output."""
    from harness.activation import mlp_activation_facts

    certify("GC-ACTIVATION-RUNTIME", mlp_activation_facts(gemma_dir), "gemma3-270m")
