"""A 4-bit model saved and read back with bitsandbytes on the CPU (the pre-quantized checkpoint path)."""

import pytest


@pytest.mark.claim("NF4-SERIALIZED")
def test_a_saved_4bit_model_reloads_identically(tiny_dir, tokenizer, tmp_path, certify):
    """tiny in 4-bit (the recipe's NF4 + double quant), save_pretrained, from_pretrained: every Linear4bit's packed
    codes, quant-state fields and dequantized weight identical, and the logits of one prompt."""
    from harness.quant_serialize import serialize_facts

    prompt = list(tokenizer.apply_chat_template([{"role": "user", "content": "شغل المنبه الساعة ٧"}],
                                                add_generation_prompt=True, return_dict=True)["input_ids"])
    certify("NF4-SERIALIZED", serialize_facts(tiny_dir, tmp_path / "tiny-4bit", prompt_ids=prompt), "tiny")
