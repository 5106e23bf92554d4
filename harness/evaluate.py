"""Held-out evaluation: greedy generation on the test split, scored as function calls."""

from __future__ import annotations

import json
import os

import torch
from tqdm.auto import tqdm

from harness.dataset import parse_call


def score(outputs: list[str], expected: list[str], functions: list[str]) -> dict:
    """JSON validity, action key presence, action accuracy and whole-call exact match, overall and per function."""
    per: dict[str, dict] = {}
    totals = {"valid": 0, "action": 0, "action_correct": 0, "exact": 0}
    for out, want, fn in zip(outputs, expected, functions):
        got, want_obj = parse_call(out), json.loads(want)
        row = per.setdefault(fn, {"n": 0, "exact": 0, "valid": 0})
        row["n"] += 1
        valid = got is not None
        exact = valid and got == want_obj
        totals["valid"] += valid
        totals["action"] += valid and "action" in got
        totals["action_correct"] += valid and got.get("action") == want_obj["action"]
        totals["exact"] += exact
        row["exact"] += exact
        row["valid"] += valid
    n = max(1, len(outputs))
    return {
        "prompts": len(outputs), "json_valid_rate": totals["valid"] / n, "action_rate": totals["action"] / n,
        "action_accuracy": totals["action_correct"] / n, "exact_match": totals["exact"] / n,
        "per_function": {fn: {**row, "exact_match": row["exact"] / row["n"]} for fn, row in sorted(per.items())},
    }


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64, batch_size: int | None = None,
                     desc: str = "evaluate") -> list[str]:
    """Greedy answers to chat prompts (the conversation up to the last user turn)."""
    device = next(model.parameters()).device
    # $HARNESS_EVAL_BATCH: concurrent runs on one GPU use a smaller batch (the prefill's logits over a
    # 262k vocabulary take ~10 GiB at 64 prompts).
    batch_size = batch_size or int(os.environ.get("HARNESS_EVAL_BATCH") or (64 if device.type == "cuda" else 16))
    stop = [tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    answers = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
            texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                     for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return answers


def evaluate_split(model, tokenizer, examples, limit: int, max_new_tokens: int = 64, desc: str = "evaluate") -> dict:
    """Score the last model turn of each of the first `limit` examples, given the conversation before it."""
    chosen = examples[:limit]
    prompts = [ex.messages[:-1] for ex in chosen]
    outputs = generate_answers(model, tokenizer, prompts, max_new_tokens, desc=desc)
    result = score(outputs, [ex.messages[-1]["content"] for ex in chosen], [ex.functions[-1] for ex in chosen])
    result["samples"] = [{"request": ex.messages[-2]["content"], "expected": ex.messages[-1]["content"], "output": out}
                         for ex, out in zip(chosen[:5], outputs[:5])]
    failures: dict[str, list] = {}
    for ex, out in zip(chosen, outputs):
        if parse_call(out) != json.loads(ex.messages[-1]["content"]) and len(failures.setdefault(ex.functions[-1], [])) < 3:
            failures[ex.functions[-1]].append({"request": ex.messages[-2]["content"], "expected": ex.messages[-1]["content"],
                                               "output": out})
    result["failures"] = failures
    # Per prompt, for CHECK-OUTPUT's paired test against a recorded run (harness.output_baseline).
    from harness.output_baseline import fingerprint

    result["outcomes"] = [{"id": ex.id, "function": ex.functions[-1], "exact": parse_call(out) == json.loads(ex.messages[-1]["content"])}
                          for ex, out in zip(chosen, outputs)]
    result["dataset_fingerprint"] = fingerprint(chosen)
    return result
