"""One backend's real training loop, stepped on request, so pytest-benchmark can time single steps.

`python -m harness.step_server --backend unsloth|hf --model M` builds the recipe's trainer and calls
`trainer.train()`. After `--warmup` free steps (compilation, caches) a callback blocks at the start
of each step until a line "step" arrives on stdin, and answers "done <input tokens>" once the step's
CUDA work has finished; "stop" ends training and prints a JSON line of warm-up time and peak memory.
The timed interval is forward + backward + optimizer + scheduler of one real step (the batch was
already collated). Each backend runs in its own process: Unsloth patches torch and transformers.

`--hold`: once the trainer is built, print "loaded" and wait for a line "warm" before the warm-up steps, so that a
server loads while other work runs and warms up when the GPU is free of long runs (harness.step_client starts it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from harness.recipe import HANDBOOK


def _sync() -> None:
    torch = sys.modules.get("torch")  # (a stand-in trainer loop in the unit tests imports no torch)
    if torch is not None and torch.cuda.is_available():  # CPU: only for trying the server out; timings mean little
        torch.cuda.synchronize()


class SteppedByStdin:
    """The stepping protocol, as a trainer callback's methods (stepped_callback adds transformers' TrainerCallback; the
    unit tests drive this class with a stand-in loop and no transformers import: tests/unit/test_step_client.py)."""

    def __init__(self, warmup: int, hold: bool = False):
        self.warmup, self.tokens, self.start = warmup, 0, time.perf_counter()
        self.warmup_seconds = None
        self.first_step_seconds = None
        self.hold = hold

    def on_train_begin(self, args, state, control, **kwargs):
        if self.hold:  # loaded: wait for the go-ahead before the first (compiling) step
            print("loaded", flush=True)
            if sys.stdin.readline().strip() != "warm":
                control.should_training_stop = True
            self.start = time.perf_counter()

    def count(self, inputs: dict) -> None:
        mask = inputs.get("attention_mask")
        self.tokens = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())  # padding-free: no pads

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step < self.warmup:
            return
        if self.warmup_seconds is None:
            _sync()
            self.warmup_seconds = time.perf_counter() - self.start
            print("ready", flush=True)
        if sys.stdin.readline().strip() != "step":
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        if self.first_step_seconds is None:
            self.first_step_seconds = time.perf_counter() - self.start
        if state.global_step > self.warmup:
            print(f"done {self.tokens}", flush=True)


def stepped_callback(warmup: int, hold: bool = False) -> SteppedByStdin:
    from transformers import TrainerCallback

    class SteppedByStdinCallback(SteppedByStdin, TrainerCallback):
        pass

    return SteppedByStdinCallback(warmup, hold)


def build_trainer(model: str, backend: str, callback: SteppedByStdin, out_dir: Path):
    import torch

    from harness.run_record import on_training_batches

    from harness import dataset as ds
    from harness.masking import reference_masker
    from harness.models import resolve
    from harness.backends.sft import tokenize_conversations

    from harness import backends

    recipe = HANDBOOK.with_(max_steps=100_000)  # the server stops when told; the schedule's length is immaterial
    source = resolve(model)
    impl = backends.get(backend)
    on_gpu = torch.cuda.is_available()
    peft_model, tokenizer = impl.load(source.path, recipe, impl.expected(recipe, on_gpu)[0])
    rows = tokenize_conversations(tokenizer, [e.messages for e in ds.generate(recipe.dataset_seed)["train"]],
                                  reference_masker(tokenizer), recipe.max_seq_length)
    trainer = impl.build_trainer(peft_model, tokenizer, recipe, out_dir, source.path, impl.train_rows(rows), None, "none",
                                 [callback], on_gpu).trainer
    on_training_batches(trainer, callback.count)
    trainer.args.save_strategy = "no"
    return trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    from harness import backends

    p.add_argument("--backend", choices=backends.names(), required=True)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--hold", action="store_true", help='print "loaded" and wait for "warm" before the warm-up steps')
    args = p.parse_args(argv)
    import torch

    callback = stepped_callback(args.warmup, args.hold)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        build_start = time.perf_counter()
        trainer = build_trainer(args.model, args.backend, callback, Path(tmp))
        build_seconds = time.perf_counter() - build_start
        callback.start = time.perf_counter()  # (with --hold: again when "warm" arrives)
        trainer.train()
    cuda = torch.cuda.is_available()
    print(json.dumps({"backend": args.backend, "model": args.model, "build_seconds": round(build_seconds, 1),
                      "warmup_steps": args.warmup, "warmup_seconds": round(callback.warmup_seconds or 0.0, 1),
                      "first_step_seconds": round(callback.first_step_seconds or 0.0, 1),
                      "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                      "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1) if cuda else None}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
