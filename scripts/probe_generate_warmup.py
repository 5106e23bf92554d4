"""Where the first evaluation batch's ~55-61 s goes on a GPU (issue #13; the tier run of 2026-11-29 on an H200:
base evaluation's first batch 61.4 s of 112.0 s, the trained model's 56.3 s of 153.5 s).

One process, the recipe's Unsloth model (4-bit, LoRA), 64 held-out prompts, greedy 64 new tokens, in this order:
eager (torch.compiler.set_stance("force_eager")) twice, then the default (Unsloth's compiled modules) twice, then a
batch of 128 (the evaluation grows to it) twice. Eager first, so the compiled first call's extra time is the
compilation alone (CUDA context, cuBLAS and allocator warm-up are paid by then). Writes $OUT/generate-warmup.json.

Measured 2026-11-29 (reports/examples/h200-2026-11-29-gpu-tier-without-experiments): the first call of each new shape
cost 50-67 s, force_eager or not; a repeat 5-9 s. Named the same day (reports/examples/h200-2026-11-29-gpu-tier-s16):
TORCH_LOGS=recompiles printed nothing (Unsloth Zoo sets torch's logs to CRITICAL at import; HARNESS_LOG_RECOMPILES=1
turns them on after it: harness.train_unsloth.log_recompiles), but the stack sampler (StackSampler, every 0.1 s) put a
first call's time in torch._dynamo, fake tensors, sympy, Triton's compiler and inductor, under force_eager too
(transformers' `torch.compile(flex_attention)`); PROBE_DYNAMIC=1 (dynamic sizes from the first call; the flag then, the
evaluation's default now, PROBE_STATIC=1 for the former) left one cold compile (67.6 s) and no second one at new batch
sizes (5.0-5.6 s), and a second process with the
same inductor cache paid 29.9 s. harness.evaluate.dynamic_shapes_from_the_first_call is the result. Commands:
  PROBE_CALLS=default-64,default-128,default-32,default-192 PROBE_JSON=dyn-cold.json \
    PYTHONPATH=$PWD scripts/gpu_runner.sh run python3 scripts/probe_generate_warmup.py
PROBE_CALLS: the labels of the table below, or "<default|eager>-<prompts>", in the order given. The JSON holds each
call's seconds, its sampled stack ("where") and every answer with its example id.
"""

import collections
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path


class StackSampler:
    """Where a call's wall time goes, by sampling the main thread's Python stack every `interval` seconds: the
    innermost frame (time spent in C shows at the Python frame that called it) and its package. A poor man's py-spy:
    the runner has no profiler, and TORCH_LOGS=recompiles printed nothing for a 45.7 s first call (2026-11-29)."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.target = interval, threading.main_thread().ident
        self.leaf, self.package, self.path = collections.Counter(), collections.Counter(), collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _where(frame) -> str:
        name = frame.f_code.co_filename
        for marker in ("site-packages/", "dist-packages/", "site/", "/lib/python3"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        return f"{name}:{frame.f_code.co_name}:{frame.f_lineno}"

    def _run(self):
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self.target)
            if frame is None:
                continue
            stack = []
            while frame is not None and len(stack) < 60:
                stack.append(self._where(frame))
                frame = frame.f_back
            self.leaf[stack[0]] += 1
            self.package["/".join(stack[0].split("/")[:2]).split(":")[0]] += 1
            self.path[" < ".join(stack[:4])] += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self, top: int = 12) -> dict:
        n = sum(self.leaf.values()) or 1
        share = lambda counter: [[k, round(v / n, 3)] for k, v in counter.most_common(top)]  # noqa: E731
        return {"samples": n, "interval_s": self.interval, "packages": share(self.package), "leaves": share(self.leaf),
                "paths": share(self.path)}


# what says which caches and modes a probe ran with (Unsloth sets the inductor and Triton folders itself unless given)
ENV_RECORDED = ("PROBE_STATIC", "PROBE_CALLS", "HARNESS_LOG_RECOMPILES", "UNSLOTH_COMPILE_DISABLE",
                "UNSLOTH_COMPILE_LOCATION", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHDYNAMO_DISABLE",
                "TORCH_LOGS")


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
    # generate_answers compiles with dynamic sizes from the first call on a GPU (the runs of 2026-11-29 set that
    # with PROBE_DYNAMIC=1, before it was the evaluation's default); PROBE_STATIC=1 brings back torch's default
    # (a static graph first, dynamic from the second shape on): the behaviour measured before
    import harness.evaluate

    dynamic = os.environ.get("PROBE_STATIC") != "1"
    if not dynamic:
        harness.evaluate.dynamic_shapes_from_the_first_call = lambda device_type: contextlib.nullcontext()
    if os.environ.get("PROBE_CALLS"):  # e.g. a fresh process with TORCHDYNAMO_DISABLE=1: PROBE_CALLS=eager-1,eager-2
        by_label = {c[0]: c for c in calls_wanted}
        # labels not in the table: "<mode>-<prompts>", e.g. default-96 (the first 96 prompts, the default mode)
        for label in os.environ["PROBE_CALLS"].split(","):
            mode, _, prompts = label.partition("-")
            if label not in by_label and mode in ("default", "eager") and prompts.isdigit():
                by_label[label] = (label, mode, int(prompts))
        calls_wanted = [by_label[label] for label in os.environ["PROBE_CALLS"].split(",")]  # in the order given
    for label, mode, n in calls_wanted:
        stats: dict = {}
        torch.cuda.synchronize()
        t = time.perf_counter()
        with (eager() if mode == "eager" else contextlib.nullcontext()), StackSampler() as sampler:
            chosen = prompts[:n] if n > 0 else prompts[128:128 - n]
            out = generate_answers(model, tokenizer, chosen, HANDBOOK.max_new_tokens, batch_size=len(chosen),
                                   desc=label, stats=stats)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        answers[label] = out
        calls.append({"call": label, "mode": mode, "prompts": len(chosen), "seconds": round(seconds, 3),
                      "padded_prompt_tokens": max(len(x) for x in prompt_ids(tokenizer, chosen)),
                      "decoding_steps": stats.get("decoding_steps"),
                      "seconds_per_step": round(seconds / max(1, stats.get("decoding_steps") or 1), 4),
                      "first_batch": stats.get("first_batch"), "where": sampler.summary()})
        print({k: v for k, v in calls[-1].items() if k != "where"}, flush=True)
        print(json.dumps(calls[-1]["where"]["packages"]), json.dumps(calls[-1]["where"]["leaves"][:6]), flush=True)
    pairs = [("eager-1", "compiled-1"), ("eager-128", "compiled-128-1")]
    same = {f"{a} vs {b}": sum(x == y for x, y in zip(answers[a], answers[b])) for a, b in pairs
            if a in answers and b in answers}
    import transformers
    import unsloth

    result = {"torch": torch.__version__, "unsloth": unsloth.__version__, "transformers": transformers.__version__,
              "gpu": torch.cuda.get_device_name(0), "set_stance": has_stance, "load_seconds": round(loaded, 1),
              "calls": calls, "answers_equal": same, "env": {k: os.environ.get(k) for k in ENV_RECORDED}}
    result["dynamic"] = dynamic
    result["answers"] = {label: [[ex.id, a] for ex, a in zip(test[:len(out)] if label != "compiled-64-other-prompts"
                                                          else test[128:192], out)] for label, out in answers.items()}
    out_dir = Path(os.environ.get("OUT") or ".")
    (out_dir / os.environ.get("PROBE_JSON", "generate-warmup.json")).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("answers", "calls")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
