"""Where the first evaluation batch's ~55-61 s goes on a GPU (issue #13; the tier run of 2026-11-29 on an H200:
base evaluation's first batch 61.4 s of 112.0 s, the trained model's 56.3 s of 153.5 s).

One process, the recipe's Unsloth model (4-bit, LoRA), 64 held-out prompts, greedy 64 new tokens, in this order:
eager (torch.compiler.set_stance("force_eager")) twice, then the default (Unsloth's compiled modules) twice, then a
batch of 128 (the evaluation grows to it) twice. Eager first, so the compiled first call's extra time is the
compilation alone (CUDA context, cuBLAS and allocator warm-up are paid by then). Writes $OUT/generate-warmup.json.

Measured 2026-11-29 (reports/examples/h200-2026-11-29-gpu-tier-without-experiments): the first call of each new shape
cost 50-67 s, force_eager or not; a repeat 5-9 s. The next run, to name the mechanism (one call, ~5 min):
  TORCH_LOGS=recompiles PYTHONPATH=$PWD scripts/gpu_runner.sh run python3 scripts/probe_generate_warmup.py
  TORCHDYNAMO_DISABLE=1 PROBE_CALLS=eager-1,eager-2,compiled-64-other-prompts PROBE_JSON=no-dynamo.json …(same)
"""

import contextlib
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    from harness import dataset as ds
    from harness.evaluate import generate_answers, prompt_ids
    from harness.models import resolve
    from harness.recipe import HANDBOOK
    from harness.train_unsloth import load_unsloth

    started = time.perf_counter()
    model, tokenizer = load_unsloth(resolve("gemma3-270m").path)
    import torch

    loaded = time.perf_counter() - started
    test = ds.generate(HANDBOOK.dataset_seed)["test"]
    has_stance = hasattr(torch.compiler, "set_stance")
    eager = (lambda: torch.compiler.set_stance("force_eager")) if has_stance else contextlib.nullcontext
    calls, answers = [], {}
    prompts = [ex.messages[:-1] for ex in test[:192]]
    calls_wanted = [("eager-1", "eager", 64), ("eager-2", "eager", 64), ("compiled-1", "default", 64),
                    ("compiled-2", "default", 64), ("compiled-128-1", "default", 128),
                    ("compiled-128-2", "default", 128), ("eager-128", "eager", 128),
                    # the same batch size with other prompts (another padded length): is the cost keyed on the batch?
                    ("compiled-64-other-prompts", "default", -64), ("compiled-32", "default", 32)]
    if os.environ.get("PROBE_CALLS"):  # e.g. a fresh process with TORCHDYNAMO_DISABLE=1: PROBE_CALLS=eager-1,eager-2
        calls_wanted = [c for c in calls_wanted if c[0] in os.environ["PROBE_CALLS"].split(",")]
    for label, mode, n in calls_wanted:
        stats: dict = {}
        torch.cuda.synchronize()
        t = time.perf_counter()
        with (eager() if mode == "eager" else contextlib.nullcontext()):
            chosen = prompts[:n] if n > 0 else prompts[128:128 - n]
            out = generate_answers(model, tokenizer, chosen, HANDBOOK.max_new_tokens, batch_size=len(chosen),
                                   desc=label, stats=stats)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        answers[label] = out
        calls.append({"call": label, "mode": mode, "prompts": len(chosen), "seconds": round(seconds, 3),
                      "padded_prompt_tokens": max(len(x) for x in prompt_ids(tokenizer, chosen)),
                      "decoding_steps": stats.get("decoding_steps"),
                      "seconds_per_step": round(seconds / max(1, stats.get("decoding_steps") or 1), 4)})
        print(calls[-1], flush=True)
    pairs = [("eager-1", "compiled-1"), ("eager-128", "compiled-128-1")]
    same = {f"{a} vs {b}": sum(x == y for x, y in zip(answers[a], answers[b])) for a, b in pairs
            if a in answers and b in answers}
    import transformers
    import unsloth

    result = {"torch": torch.__version__, "unsloth": unsloth.__version__, "transformers": transformers.__version__,
              "gpu": torch.cuda.get_device_name(0), "set_stance": has_stance, "load_seconds": round(loaded, 1),
              "calls": calls, "answers_equal": same, "env": {k: os.environ.get(k) for k in
                                                             ("UNSLOTH_COMPILE_DISABLE", "TORCHINDUCTOR_CACHE_DIR", "TORCHDYNAMO_DISABLE",
                                                              "TORCH_LOGS", "PROBE_CALLS")}}
    out_dir = Path(os.environ.get("OUT") or ".")
    (out_dir / os.environ.get("PROBE_JSON", "generate-warmup.json")).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
