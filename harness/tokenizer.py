"""The Gemma 3 tokenizer: built from the faithful SentencePiece model, with a FunctionGemma-style chat template."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from harness.recipe import HANDBOOK

# FunctionGemma turns: `<start_of_turn>{developer|user|model}\n … <end_of_turn>\n`. "system" is the
# developer turn and "assistant" the model turn. The {% generation %} block marks what a model turn
# trains on (its content, <end_of_turn> and the newline), which is what TRL's assistant-only loss
# reads and what Unsloth's train_on_responses_only keeps.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = message['role'] %}"
    "{% if role == 'system' %}{% set role = 'developer' %}"
    "{% elif role == 'assistant' %}{% set role = 'model' %}{% endif %}"
    "{% if role not in ['developer', 'user', 'model'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if role == 'model' %}"
    "{% generation %}{{ message['content'] + '<end_of_turn>\n' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<end_of_turn>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

INSTRUCTION_PART = HANDBOOK.instruction_part  # "<start_of_turn>user\n"
RESPONSE_PART = HANDBOOK.response_part  # "<start_of_turn>model\n"


def build_tokenizer_files(sentencepiece_model: bytes, out_dir: Path) -> None:
    """Write tokenizer.model, the fast tokenizer (tokenizer.json) and the chat template into `out_dir`."""
    from transformers import GemmaTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / "_sentencepiece"
    staging.mkdir(exist_ok=True)
    (staging / "tokenizer.model").write_bytes(sentencepiece_model)
    # transformers 5 converts tokenizer.model into a fast BPE tokenizer (~8 s) with Gemma's
    # special tokens; <start_of_turn>/<end_of_turn> stay control tokens matched as a whole.
    tokenizer = GemmaTokenizer.from_pretrained(str(staging), add_bos_token=True, add_eos_token=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "tokenizer.model").write_bytes(sentencepiece_model)
    declare_added_tokens(out_dir)
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()


def declare_added_tokens(folder: Path) -> None:
    """List every added token in tokenizer_config.json's `added_tokens_decoder`, as Google's files do.

    transformers 5 keeps them only in tokenizer.json, but llama.cpp's converter (the one Unsloth's
    save_pretrained_gguf runs) learns user-defined pieces (whitespace runs, newlines, HTML tags) only
    from that key. Without it the converter wrote 30 whitespace pieces as normal "▁▁" tokens and
    llama.cpp split "a    b" differently from Gemma's tokenizer (measured: 3 of 240 corpus strings).
    """
    added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in added}
    config.pop("vocab_file", None)  # points into the deleted staging folder
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    """Load the tokenizer of a checkpoint folder (cached per process: the 32 MB tokenizer.json takes seconds)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
