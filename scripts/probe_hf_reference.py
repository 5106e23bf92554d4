"""Probe, on a GPU runner: the two slow steps around the GPU tier's GGUF checks, measured apart (session 17).

1. Materializing the embedded 270M: transformers' GGUF loader through gguf-py's reader, then through the fast reader
   (harness.models.gguf_py_reads_fast), each from the same assembled GGUF, and the cache's own build (resolve).
2. GGUF-LLAMACPP's transformers reference (20 held-out prompts, 16 new tokens, float32 on the CPU, the threads
   harness.gguf_verify.single_child_threads gives): in a child process before and after this process loads the model
   through Unsloth, and in this process after that load (what the GPU tier's pytest process did before session 17).
   Their answers are compared token for token.

Writes $OUT/probe-hf-reference.json (default /tmp/out). Run from the repository root with the runner's environment:
`PYTHONPATH=$PWD scripts/gpu_runner.sh run python scripts/probe_hf_reference.py`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT") or "/tmp/out")
PROMPTS = 20
NEW_TOKENS = 16


def timed(facts: dict, name: str, fn):
    started = time.perf_counter()
    value = fn()
    facts[name] = round(time.perf_counter() - started, 2)
    print(f"{name}: {facts[name]} s", flush=True)
    return value


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from harness import gguf_verify, models
    from harness.dataset import generate
    from harness.tokenizer import load_tokenizer

    facts: dict = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
                   "seconds": {}}
    seconds = facts["seconds"]
    gguf = models.embedded_gguf()

    def load(fast: bool):
        def run():
            if fast:
                with models.gguf_py_reads_fast():
                    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                dtype=torch.bfloat16)
            return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
        return run

    slow_model = timed(seconds, "gguf load, gguf-py's reader", load(False))
    fast_model = timed(seconds, "gguf load, the fast reader", load(True))
    slow, fast = slow_model.state_dict(), fast_model.state_dict()
    facts["same_weights"] = slow.keys() == fast.keys() and all(torch.equal(slow[k], fast[k]) for k in slow)
    del slow_model, fast_model
    checkpoint = timed(seconds, "resolve (the cache's build, or a hit)", lambda: models.resolve("gemma3-270m").path)

    tokenizer = load_tokenizer(str(checkpoint))
    stop = sorted({tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id})
    prompt_ids = [list(tokenizer.apply_chat_template(ex.messages[:-1], add_generation_prompt=True,
                                                     return_dict=True)["input_ids"])
                  for ex in generate(0)["test"][:PROMPTS]]
    job = {"checkpoint": str(checkpoint), "prompt_ids": prompt_ids, "stop": stop, "pad": tokenizer.pad_token_id,
           "max_new_tokens": NEW_TOKENS, "threads": gguf_verify.single_child_threads()}
    facts["job"] = {"prompts": len(prompt_ids), "max_new_tokens": NEW_TOKENS, "threads": job["threads"]}
    child_before = timed(seconds, "reference in a child, before Unsloth", lambda: gguf_verify._hf_child(job))

    answers = {"child_before_unsloth": child_before}
    try:
        def unsloth_load():
            from unsloth import FastLanguageModel

            model, _ = FastLanguageModel.from_pretrained(str(checkpoint), max_seq_length=512, load_in_4bit=True)
            return model

        model = timed(seconds, "Unsloth's load in this process", unsloth_load)
        del model
        torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 (a CPU machine: the probe's second half needs Unsloth and a GPU)
        facts["unsloth"] = f"not loaded: {type(exc).__name__}: {exc}"
    else:
        facts["model_code_patched"] = gguf_verify.model_code_patched()
        answers["in_process_after_unsloth"] = timed(seconds, "reference in this process, after Unsloth",
                                                    lambda: gguf_verify._hf_side(job))
        answers["child_after_unsloth"] = timed(seconds, "reference in a child, after Unsloth",
                                               lambda: gguf_verify._hf_child(job))
    base = answers["child_before_unsloth"]
    facts["same_answers_as_child_before_unsloth"] = {
        name: sum(a == b for a, b in zip(base, other)) if len(other) == len(base) else f"{len(other)} answers"
        for name, other in answers.items()}
    facts["answers"] = answers
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "probe-hf-reference.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps({k: v for k, v in facts.items() if k != "answers"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
