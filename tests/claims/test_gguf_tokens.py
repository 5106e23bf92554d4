"""The Q8_0 export read by llama.cpp as a user's inference reads it: from text, through the GGUF's own chat template,
with no stop ids passed. Both exporters: this project's and llama.cpp's converter (Unsloth's save_pretrained_gguf)."""

import pytest

EXPORTERS = {"tiny_gguf": "tiny", "tiny_gguf_converter": "llama.cpp-converter"}  # fixture -> measurement context
_FACTS: dict = {}


@pytest.fixture(params=list(EXPORTERS))
def export(request, llama_cpp_reader, tiny_dir, dataset):
    """(context, facts) of one exporter's file of tiny: one llama.cpp child per file, shared by the tests."""
    name = request.param
    if name not in _FACTS:
        from harness.llama_text import prompt_and_stop_facts

        path = request.getfixturevalue(name)
        chats = [ex.messages[:-1] for ex in dataset["test"][:8]]
        _FACTS[name] = prompt_and_stop_facts(path, tiny_dir, chats)
    return EXPORTERS[name], _FACTS[name]


@pytest.mark.claim("GGUF-PROMPT-TEXT")
def test_text_prompt_through_the_gguf_template_gives_hf_ids(export, certify):
    """llama-cpp-python's chat handler renders the GGUF's own template and tokenizes it: HF's prompt ids, one <bos>."""
    context, facts = export
    certify("GGUF-PROMPT-TEXT", facts["prompt"], context)


@pytest.mark.claim("GGUF-EOS")
def test_llamacpp_stops_at_end_of_turn_without_stop_ids(export, certify):
    """The GGUF's eos is <eos>; llama.cpp ends a chat completion at a forced <end_of_turn> or <eos>, never at "\\n"."""
    context, facts = export
    certify("GGUF-EOS", facts["stop"], context)
