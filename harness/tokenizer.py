"""The Gemma 3 tokenizer: built from the faithful SentencePiece model, with a FunctionGemma-style chat template."""

from __future__ import annotations

import functools
from pathlib import Path

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

INSTRUCTION_PART = "<start_of_turn>user\n"
RESPONSE_PART = "<start_of_turn>model\n"
END_OF_TURN = "<end_of_turn>"


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
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    """Load the tokenizer of a checkpoint folder (cached per process: the 32 MB tokenizer.json takes seconds)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
