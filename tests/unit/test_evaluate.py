"""Held-out evaluation generates in left-padded batches: the answers are exactly those of one prompt at a time."""

import pytest


@pytest.mark.slow
def test_batched_greedy_answers_equal_one_by_one(tiny_dir, tokenizer, dataset):
    """8 held-out prompts of different lengths (left padding 0-65 tokens), batch 8 vs batch 1: same 16 tokens each."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.evaluate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    prompts = [ex.messages[:-1] for ex in dataset["test"][:8]]
    lengths = {len(tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"])
               for p in prompts}
    assert len(lengths) > 1, "the prompts must differ in length, or no padding is tested"
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=16, batch_size=8)
    single = generate_answers(model, tokenizer, prompts, max_new_tokens=16, batch_size=1)
    assert batched == single
