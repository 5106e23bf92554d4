"""This project's Q8_0 GGUF exporter for Gemma 3 checkpoints (gguf-py), for where llama.cpp's converter is absent.

It writes what llama.cpp's convert_hf_to_gguf.py writes for Gemma 3: 2-D weights as Q8_0 (blocks of
32 int8 with an fp16 scale, 34 bytes), norms as F32 with Gemma's +1 shift (Gemma's RMSNorm computes
x·(1+w); llama.cpp multiplies by the stored weight), the `gemma3.*` hyperparameters, the tokenizer as
`tokenizer.ggml.*` and the chat template. The tied lm_head is not stored (llama.cpp reuses token_embd).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

Q8_0_BLOCK = 32
Q8_0_BLOCK_BYTES = 34
CONTROL = 3
USER_DEFINED = 4


def tokenizer_fields(model_dir: Path) -> dict:
    """Pieces, scores and types from the checkpoint's tokenizer.model, as llama.cpp's converter stores them."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb

    proto = sp_pb.ModelProto()
    proto.ParseFromString((model_dir / "tokenizer.model").read_bytes())
    tokens, scores, types = [], [], []
    for piece in proto.pieces:
        text = piece.piece
        if piece.type == USER_DEFINED:  # the converter un-escapes user-defined pieces ("▁▁" -> "  ")
            text = text.replace("\u2581", " ")
        tokens.append(text)
        scores.append(piece.score)
        types.append(piece.type)
    # As llama.cpp's converter does: tokens listed in tokenizer_config.json's added_tokens_decoder are
    # control tokens when special, else user-defined (so <unk>, UNKNOWN in the SentencePiece model, is
    # stored as a control token, as in Google's own GGUF).
    config_path = model_dir / "tokenizer_config.json"
    added = json.loads(config_path.read_text()).get("added_tokens_decoder", {}) if config_path.exists() else {}
    for token_id, token in added.items():
        index = int(token_id)
        if index < len(types):
            special = token.get("special")
            types[index] = CONTROL if special else USER_DEFINED
            tokens[index] = token["content"] if special else token["content"].replace("\u2581", " ")
    spec = proto.trainer_spec
    return {"tokens": tokens, "scores": scores, "types": types, "bos": spec.bos_id, "eos": spec.eos_id,
            "unk": spec.unk_id, "pad": spec.pad_id}


def gguf_name(name_map, hf_name: str) -> str | None:
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def is_norm(hf_name: str) -> bool:
    return hf_name.endswith("norm.weight")


def export_q8_0(model_dir: Path, out_path: Path, name: str | None = None) -> Path:
    """Write `out_path` (a Q8_0 GGUF) from a merged HF Gemma 3 checkpoint folder."""
    import gguf
    from safetensors import safe_open
    from tqdm.auto import tqdm

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") not in ("gemma3_text", "gemma3"):
        raise ValueError(f"{model_dir} is a {config.get('model_type')!r} checkpoint; this exporter writes Gemma 3 only")
    config = config.get("text_config", config)
    blocks = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, blocks)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(tmp), "gemma3")
    writer.add_name(name or config.get("_name_or_path") or model_dir.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.get("max_position_embeddings", 32768))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    theta = (rope.get("full_attention") or rope).get("rope_theta", config.get("rope_theta", 1_000_000.0))
    writer.add_rope_freq_base(theta)
    if config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])

    tok = tokenizer_fields(model_dir)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tok["tokens"])
    writer.add_token_scores(tok["scores"])
    writer.add_token_types(tok["types"])
    writer.add_bos_token_id(tok["bos"])
    writer.add_eos_token_id(tok["eos"])
    writer.add_unk_token_id(tok["unk"])
    writer.add_pad_token_id(tok["pad"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    template = model_dir / "chat_template.jinja"
    if template.exists():
        writer.add_chat_template(template.read_text())

    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        names = [n for n in weights.keys() if n != "lm_head.weight"]
        for hf_name in tqdm(names, desc="export Q8_0 GGUF", unit="tensor"):
            target = gguf_name(name_map, hf_name)
            if target is None:
                raise ValueError(f"no GGUF name for tensor {hf_name}")
            data = weights.get_tensor(hf_name).float().numpy()
            if is_norm(hf_name):
                writer.add_tensor(target, (data + 1.0).astype(np.float32))
            elif data.ndim == 2 and data.shape[-1] % Q8_0_BLOCK == 0:
                packed = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(target, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(target, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    tmp.replace(out_path)
    return out_path
