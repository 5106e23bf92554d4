"""The faithful Gemma 3 tokenizer rebuilt from the GGUF vocabulary."""

import pytest

from harness.corpus import tokenizer_corpus

KNOWN = {
    "<start_of_turn>user\n": [105, 2364, 107],
    "<start_of_turn>model\n": [105, 4368, 107],
    "The capital of France is": [818, 5279, 529, 7001, 563],
    "a    b": [236746, 140, 236763],
}


@pytest.mark.parametrize("text,ids", KNOWN.items())
def test_known_ids(tokenizer, text, ids):
    """Strings with ids known from Gemma's own tokenizer and llama.cpp tokenize to exactly those ids."""
    assert tokenizer.encode(text, add_special_tokens=False) == ids


@pytest.mark.parametrize("text", ["عاصمة مصر هي القاهرة", "Hello, world!", '{"action": "set_alarm", "time": "07:30"}',
                                  "٠١٢٣٤٥٦٧٨٩ 0123456789", "a \t  b\n\n\n   c", "😀🚀🇪🇬", "مرحبا 👋 بالعالم  ",
                                  "شغّل الليت في المكتب"])
def test_decode_round_trips(tokenizer, text):
    """decode(encode(text)) == text for Arabic, English, JSON, digits, whitespace runs and emoji."""
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_bos_is_added_and_chat_template_renders_functiongemma_turns(tokenizer):
    """A plain encode starts with <bos>; system maps to developer and assistant to model."""
    assert tokenizer("x")["input_ids"][0] == 2
    text = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                          {"role": "assistant", "content": "A"}], tokenize=False)
    assert text == "<bos><start_of_turn>developer\nS<end_of_turn>\n<start_of_turn>user\nU<end_of_turn>\n" \
                   "<start_of_turn>model\nA<end_of_turn>\n"


def test_same_ids_as_sentencepiece_on_the_corpus(tokenizer, tiny_dir):
    """The fast tokenizer and SentencePiece on the rebuilt model agree on 240 strings (no special tokens)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    corpus = [t for t in tokenizer_corpus() if "<" not in t]
    assert len(corpus) >= 200
    assert [tokenizer.encode(t, add_special_tokens=False) for t in corpus] == [sp.encode(t) for t in corpus]


def test_same_ids_as_llamacpp_on_the_original_gguf(tokenizer, llama_cpp_reader):
    """llama.cpp's own tokenizer on google's GGUF gives the same ids on ≥200 strings."""
    import llama_cpp
    from harness.models import embedded_gguf

    llm = llama_cpp.Llama(model_path=str(embedded_gguf()), vocab_only=True, verbose=False)
    corpus = tokenizer_corpus()
    assert len(corpus) >= 200
    ours = [tokenizer.encode(t, add_special_tokens=False) for t in corpus]
    theirs = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in corpus]
    assert [t for t, a, b in zip(corpus, ours, theirs) if a != b] == []


def test_sentencepiece_model_declares_its_unknown_piece(tiny_dir):
    """The unk_id piece is of type UNKNOWN: sentencepiece 0.2.2 (llama.cpp's converter) refuses the model otherwise."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb

    model = sp_pb.ModelProto()
    model.ParseFromString((tiny_dir / "tokenizer.model").read_bytes())
    unknown = [i for i, piece in enumerate(model.pieces) if piece.type == sp_pb.ModelProto.SentencePiece.UNKNOWN]
    assert [model.trainer_spec.unk_id] == unknown == [3]


def test_tokenizer_config_lists_added_tokens_for_llamacpps_converter(tiny_dir):
    """tokenizer_config.json's added_tokens_decoder holds every added token, user-defined whitespace pieces included."""
    import json

    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    added = json.loads((tiny_dir / "tokenizer.json").read_text())["added_tokens"]
    decoder = config["added_tokens_decoder"]
    assert {str(t["id"]): t["content"] for t in added} == {k: v["content"] for k, v in decoder.items()}
    assert decoder["140"] == {"content": "\u2581" * 4, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": False}
