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
