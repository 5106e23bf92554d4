"""A faithful Gemma 3 SentencePiece model, rebuilt from the vocabulary stored in a GGUF file.

Why not transformers' own GGUF tokenizer conversion: it tokenizes "<start_of_turn>user\\n" as
[105, "us", "er", 107] and Arabic differently from Gemma. The GGUF holds everything SentencePiece
needs (pieces, scores, types); the settings below are Gemma's (BPE, byte fallback, identity
normalizer, no dummy prefix, escaped whitespace, split digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# GGUF token types share SentencePiece's numbering: 1 normal, 2 unknown, 3 control,
# 4 user-defined, 5 unused, 6 byte.
UNKNOWN = 2
USER_DEFINED = 4
SPACE_PIECE = "\u2581"


@dataclass(frozen=True)
class GgufVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int


def read_gguf_vocab(gguf_path: Path, cache_file: Path | None = None) -> GgufVocab:
    """Read the tokenizer fields of a GGUF file (~20 s for 262,144 entries; cached when asked).

    The cache is JSON (a pickle in a shared cache would let whoever can write it run code in the suite),
    holds the sha256 of the GGUF it was read from and of its own payload, and is used only when both match;
    otherwise it is read again, and the run says why."""
    import hashlib
    import json
    import sys

    from harness.measure_cache import file_digest

    source = file_digest(Path(gguf_path))
    if cache_file is not None and cache_file.exists():
        try:
            entry = json.loads(cache_file.read_text())
            payload = json.dumps(entry["vocab"], sort_keys=True)
            if entry["gguf_sha256"] == source and hashlib.sha256(payload.encode()).hexdigest() == entry["sha256"]:
                return GgufVocab(**entry["vocab"])
            why = "it was read from another GGUF" if entry["gguf_sha256"] != source else "its sha256 does not match"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = f"it is unreadable ({type(exc).__name__})"
        print(f"vocabulary cache {cache_file}: {why}; reading the GGUF again", file=sys.stderr)
    from harness.gguf_verify import fast_reader_class

    fields = fast_reader_class()(str(gguf_path)).fields

    def scalar(name: str) -> int:
        field = fields[name]
        return int(field.parts[field.data[0]][0])

    tokens_field = fields["tokenizer.ggml.tokens"]
    scores_field = fields["tokenizer.ggml.scores"]
    types_field = fields["tokenizer.ggml.token_type"]
    vocab = GgufVocab(
        tokens=[bytes(tokens_field.parts[i]).decode("utf-8") for i in tokens_field.data],
        scores=[float(scores_field.parts[i][0]) for i in scores_field.data],
        types=[int(types_field.parts[i][0]) for i in types_field.data],
        bos_id=scalar("tokenizer.ggml.bos_token_id"),
        eos_id=scalar("tokenizer.ggml.eos_token_id"),
        unk_id=scalar("tokenizer.ggml.unknown_token_id"),
        pad_id=scalar("tokenizer.ggml.padding_token_id"),
    )
    if cache_file is not None:
        from dataclasses import asdict

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        payload = asdict(vocab)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"gguf_sha256": source, "sha256": digest, "vocab": payload}))
        tmp.replace(cache_file)
    return vocab


def piece_for(token: str, token_type: int) -> str:
    """The SentencePiece piece for a GGUF token.

    llama.cpp's converter un-escaped the user-defined whitespace pieces ("    " instead of "▁▁▁▁");
    escaped again, whitespace runs tokenize as llama.cpp and Gemma do.
    """
    if token_type == USER_DEFINED and token and set(token) == {" "}:
        return token.replace(" ", SPACE_PIECE)
    return token


def sentencepiece_model_bytes(vocab: GgufVocab) -> bytes:
    """Serialize a SentencePiece ModelProto equivalent to Gemma 3's tokenizer.model."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb

    model = sp_pb.ModelProto()
    trainer = model.trainer_spec
    trainer.model_type = sp_pb.TrainerSpec.BPE
    trainer.vocab_size = len(vocab.tokens)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = (
        vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.pad_id,
    )
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    for index, (token, score, token_type) in enumerate(zip(vocab.tokens, vocab.scores, vocab.types)):
        piece = model.pieces.add()
        piece.piece = piece_for(token, token_type)
        piece.score = score
        # The GGUF marks <unk> as a control token; SentencePiece needs its unk_id piece to be UNKNOWN
        # (sentencepiece 0.2.2, which llama.cpp's converter loads, refuses the model: "unk is not defined").
        piece.type = UNKNOWN if index == vocab.unk_id else token_type
    return model.SerializeToString()
