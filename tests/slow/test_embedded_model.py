"""The embedded Gemma 3 270M has real weights."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_greedy_arabic_capital_of_egypt_is_cairo(gemma_dir, tokenizer):
    """Greedy "عاصمة مصر هي" continues with "القاهرة"."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gemma_dir), dtype=torch.float32).eval()
    ids = tokenizer("عاصمة مصر هي", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "القاهرة" in tokenizer.decode(out[0][ids["input_ids"].shape[1]:])


def test_random_270m_has_the_embedded_models_architecture(gemma_dir):
    """gemma3-270m-random (memory/speed figures without the GGUF) has the embedded checkpoint's config."""
    import json

    from harness.models import gemma3_270m_config

    embedded = json.loads((gemma_dir / "config.json").read_text())
    ours = gemma3_270m_config().to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "sliding_window", "layer_types",
            "max_position_embeddings", "hidden_activation", "tie_word_embeddings", "rope_parameters")
    assert {k: embedded[k] for k in keys} == {k: ours[k] for k in keys}
    assert abs(embedded["rms_norm_eps"] - ours["rms_norm_eps"]) < 1e-12
