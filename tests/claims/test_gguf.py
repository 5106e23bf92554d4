"""Handbook §5 "Export" on the CPU: this project's Q8_0 exporter, verified by gguf-py and by llama.cpp."""

import pytest

from harness.gguf_verify import file_error, file_layout


@pytest.mark.claim("GGUF-Q8-EXPORT")
def test_export_writes_q8_0_blocks_f32_norms_and_full_metadata(tiny_gguf, gemma_gguf, certify):
    """Every 2-D weight is Q8_0 in 34-byte blocks, every norm F32, no required key missing."""
    certify("GGUF-Q8-EXPORT", {"exporter": "harness.gguf_export", **file_layout(tiny_gguf)}, "tiny")
    certify("GGUF-Q8-EXPORT", {"exporter": "harness.gguf_export", **file_layout(gemma_gguf)}, "gemma3-270m")


@pytest.mark.claim("GGUF-Q8-ERROR")
def test_q8_0_error_is_within_its_block_bound_on_real_weights(gemma_gguf, gemma_dir, certify):
    """Dequantized Q8_0 tensors are within 0.0045·amax of the 270M's weights, block by block."""
    facts = file_error(gemma_gguf, gemma_dir)
    assert facts["norm_max_err_after_shift"] == 0.0, "norms must be stored as w + 1, exactly"
    certify("GGUF-Q8-ERROR", facts, "gemma3-270m")


@pytest.mark.claim("GGUF-LLAMACPP")
def test_llamacpp_reads_the_export_like_transformers(llama_cpp_reader, tiny_gguf, tiny_dir, dataset, certify):
    """llama.cpp loads the tiny export; its token ids equal the HF tokenizer's on 240 strings."""
    from harness.corpus import tokenizer_corpus
    from harness.gguf_verify import llamacpp_checks

    prompts = [ex.messages[:-1] for ex in dataset["test"][:20]]
    certify("GGUF-LLAMACPP", llamacpp_checks(tiny_gguf, tiny_dir, prompts, tokenizer_corpus()), "tiny")


@pytest.mark.claim("GGUF-Q8-EXPORT", "GGUF-LLAMACPP")
def test_llamacpp_converter_and_project_exporter_write_the_same_model(llama_cpp_reader, tiny_gguf_converter, tiny_gguf, tiny_dir, dataset,
                                                                      certify):
    """llama.cpp's converter (Unsloth's path) and this project's exporter: same tensors, token table and outputs."""
    from harness.corpus import tokenizer_corpus
    from harness.gguf_compare import compare, summary
    from harness.gguf_verify import llamacpp_checks
    from harness.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_dir))
    prompts = [ex.messages[:-1] for ex in dataset["test"][:20]]
    prompt_ids = [list(tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"])
                  for p in prompts]
    report = compare(tiny_gguf_converter, tiny_gguf, prompt_ids, tokenizer_corpus())
    facts = {"exporter": "llama.cpp convert_hf_to_gguf.py (vendored from the llama-cpp-python sdist)",
             **file_layout(tiny_gguf_converter), **summary(report)}
    certify("GGUF-Q8-EXPORT", facts, "llama.cpp-converter", soft=True)
    certify("GGUF-LLAMACPP", llamacpp_checks(tiny_gguf_converter, tiny_dir, prompts, tokenizer_corpus()), "tiny", soft=True)
    certify.check()
