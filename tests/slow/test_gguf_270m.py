"""The embedded Gemma 3 270M through llama.cpp: greedy generations against transformers."""

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.claim("GGUF-LLAMACPP")
def test_llamacpp_greedy_matches_transformers_on_the_270m(llama_cpp_reader, gemma_gguf, gemma_dir, dataset, certify):
    """The 270M's Q8_0 export: same token ids on 240 strings; first-token agreement on 20 held-out prompts."""
    from harness.corpus import tokenizer_corpus
    from harness.gguf_verify import llamacpp_checks

    prompts = [ex.messages[:-1] for ex in dataset["test"][:20]]
    certify("GGUF-LLAMACPP", llamacpp_checks(gemma_gguf, gemma_dir, prompts, tokenizer_corpus()), "gemma3-270m")
