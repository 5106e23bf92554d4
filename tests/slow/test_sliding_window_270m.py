"""The embedded Gemma 3 270M past its 512-token sliding window: transformers against llama.cpp on a ~1,500-token prompt."""

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.claim("GGUF-SLIDING-WINDOW")
def test_llamacpp_matches_transformers_past_the_sliding_window(llama_cpp_reader, gemma_gguf, gemma_dir, dataset, certify):
    """Teacher-forced next-token logits every 25 positions of a 1,500-token chat of held-out exchanges: inside and past
    the window llama.cpp (Q8_0) stays at quantization distance from transformers (float32); opening the window in
    transformers moves them ~20x further (the probe sees the window)."""
    from harness.llama_text import long_context_facts, long_prompt
    from harness.tokenizer import load_tokenizer

    ids = long_prompt(load_tokenizer(str(gemma_dir)), [ex.messages for ex in dataset["test"]], min_tokens=1500)
    certify("GGUF-SLIDING-WINDOW", long_context_facts(gemma_gguf, gemma_dir, ids), "gemma3-270m")
