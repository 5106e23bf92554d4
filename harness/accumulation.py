"""Gradient accumulation is one big batch: the measurement behind ACCUM-EQUIVALENCE.

The recipe runs 1 × batch 8, but users trade batch size for accumulation, and both halves of that trade have broken
in the libraries: the 2024 loss normalization (each micro-batch's mean loss, summed or averaged: transformers #34191,
follow-ups #34263/#35438; Unsloth still falls back for Gemma 3, unsloth #4725/#3344) and schedulers stepped once per
micro-batch (accelerate #963). Here the hf backend's own trainer is built twice from one recipe on the same rows,
1 × batch B and A × batch B/A, and trained for a few optimizer steps:

- the first optimizer step's gradient, before clipping: every trainable parameter's gradient summed over the step's
  micro-batches by tensor hooks (what `p.grad` holds when the trainer clips), compared between the two trainers;
- the gradient norm the trainer itself logs (pre-clipping, `grad_norm` in its log history);
- the lr the optimizer holds at each optimizer step, the scheduler's step count and the micro-batches run per step.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class _Probe:
    """A TrainerCallback (built lazily: transformers is imported by the caller) that records, per optimizer step, the
    optimizer's lr and the micro-batches that ran, sums the first step's gradients, and stops after `steps`."""

    def __init__(self, steps: int):
        from transformers import TrainerCallback

        probe = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                probe.attach(model)

            def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
                probe.optimizer_step(optimizer)

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= probe.steps:
                    control.should_training_stop = True

        self.steps = steps
        self.callback = Callback()
        self.lrs: list[float] = []
        self.micro_batches: list[int] = []
        self.first_grads: dict[str, torch.Tensor] = {}
        self._backward_calls = 0
        self._in_first_step = True
        self._handles = []

    def attach(self, model) -> None:
        for name, param in model.named_parameters():
            if param.requires_grad:
                self._handles.append(param.register_hook(self._hook(name)))
        self._model = model

    def _hook(self, name: str):
        def hook(grad):
            if self._in_first_step:
                previous = self.first_grads.get(name)
                self.first_grads[name] = grad.detach().clone() if previous is None else previous + grad.detach()
            return grad

        return hook

    def optimizer_step(self, optimizer) -> None:
        # Called before optimizer.step(): the lr this step applies, and how many backward passes fed it.
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))
        # Gradient hooks fire once per parameter per backward: count backward passes by one trainable parameter.
        self.micro_batches.append(self._backward_calls)
        self._backward_calls = 0
        self._in_first_step = False

    def count_backward(self) -> None:
        self._backward_calls += 1

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()


def train_steps(source_dir: Path, recipe, conversations: list[list[dict]], out_dir: Path, steps: int,
                backend: str = "hf") -> dict:
    """`backend`'s trainer (as harness.finetune builds it: hf on the CPU, unsloth on CUDA) for `steps` optimizer steps of
    `recipe`. Returns the first step's summed gradients, the lr of each optimizer step, micro-batches per step, the
    logged pre-clipping gradient norms and the scheduler's step count."""
    from harness.backends import get
    from harness.backends.sft import tokenize_conversations
    from harness.masking import reference_masker

    impl = get(backend)
    on_gpu = impl.needs_gpu
    expected, _ = impl.expected(recipe, on_gpu=on_gpu)
    model, tokenizer = impl.load(Path(source_dir), recipe, expected)  # seeds the LoRA init with recipe.seed
    rows = impl.train_rows(tokenize_conversations(tokenizer, conversations, reference_masker(tokenizer),
                                                  recipe.max_seq_length))
    probe = _Probe(steps)
    built = impl.build_trainer(model, tokenizer, recipe, Path(out_dir), Path(source_dir), rows, None, "none",
                               [probe.callback], on_gpu)
    trainer = built.trainer
    # One trainable parameter's hook counts the backward passes (micro-batches).
    counter = next(p for p in trainer.model.parameters() if p.requires_grad)
    handle = counter.register_hook(lambda grad: probe.count_backward())
    try:
        trainer.train()
    finally:
        handle.remove()
        probe.detach()
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    grads = {name: g.float().cpu() for name, g in probe.first_grads.items()}  # compared on the CPU, in float32 at least
    return {"grads": grads, "lrs": probe.lrs, "micro_batches": probe.micro_batches,
            "grad_norms_logged": [float(g) for g in logged], "optimizer_steps": trainer.state.global_step,
            "scheduler_steps": int(trainer.lr_scheduler.last_epoch),
            "batch": recipe.per_device_train_batch_size, "accumulation": recipe.gradient_accumulation_steps}


def compare(full: dict, accumulated: dict, recipe) -> dict:
    """ACCUM-EQUIVALENCE measurements from two train_steps results (1 × B and A × B/A on the same rows)."""
    from spec.schedule import closed_form

    names = sorted(full["grads"])
    missing = sorted(set(names) ^ set(accumulated["grads"]))
    diff = sum(float((full["grads"][n] - accumulated["grads"][n]).double().pow(2).sum()) for n in names if n in accumulated["grads"])
    norm = sum(float(full["grads"][n].double().pow(2).sum()) for n in names)
    norm_acc = sum(float(accumulated["grads"][n].double().pow(2).sum()) for n in accumulated["grads"])
    peak, warmup, total = recipe.learning_rate, recipe.warmup_steps, recipe.max_steps
    closed = [closed_form(t, peak, warmup, total) for t in range(len(full["lrs"]))]
    lr_pairs = list(zip(full["lrs"], accumulated["lrs"]))
    return {
        "rows": full["batch"], "full": f"1 x batch {full['batch']}",
        "accumulated": f"{accumulated['accumulation']} x batch {accumulated['batch']}",
        "parameters_compared": len(names), "parameters_missing": missing,
        "parameters_with_gradient": sum(float(full["grads"][n].abs().max()) > 0 for n in names),
        "grad_norm_full": math.sqrt(norm), "grad_norm_accumulated": math.sqrt(norm_acc),
        "grad_rel_l2": math.sqrt(diff / norm) if norm > 0 else float("nan"),
        "grad_norm_logged_full": full["grad_norms_logged"][:1], "grad_norm_logged_accumulated": accumulated["grad_norms_logged"][:1],
        "grad_norm_rel_diff": (abs(full["grad_norms_logged"][0] - accumulated["grad_norms_logged"][0]) / full["grad_norms_logged"][0]
                               if full["grad_norms_logged"] and accumulated["grad_norms_logged"] else float("nan")),
        "lrs_full": full["lrs"], "lrs_accumulated": accumulated["lrs"], "lrs_closed_form": closed,
        "lr_max_abs_diff": (max(abs(a - b) for a, b in lr_pairs) if lr_pairs and len(full["lrs"]) == len(accumulated["lrs"])
                            else float("inf")),
        "lr_vs_closed_form_max_abs": max((abs(a - c) for a, c in zip(accumulated["lrs"], closed)), default=float("inf")),
        "optimizer_steps_full": full["optimizer_steps"], "optimizer_steps_accumulated": accumulated["optimizer_steps"],
        "scheduler_steps_full": full["scheduler_steps"], "scheduler_steps_accumulated": accumulated["scheduler_steps"],
        "scheduler_steps_minus_optimizer_steps": max(full["scheduler_steps"] - full["optimizer_steps"],
                                                     accumulated["scheduler_steps"] - accumulated["optimizer_steps"], key=abs),
        "micro_batches_per_step_full": full["micro_batches"], "micro_batches_per_step_accumulated": accumulated["micro_batches"],
    }


def accumulation_facts(source_dir: Path, recipe, conversations: list[list[dict]], out_dir: Path, accumulation: int = 2,
                       steps: int = 2, backend: str = "hf") -> dict:
    """1 × batch len(conversations) vs `accumulation` × batch len/accumulation, same rows, `steps` optimizer steps."""
    rows = len(conversations)
    assert rows % accumulation == 0, "the rows must split into equal micro-batches"
    full = train_steps(source_dir, recipe.with_(per_device_train_batch_size=rows, gradient_accumulation_steps=1),
                       conversations, Path(out_dir) / "full", steps, backend)
    accumulated = train_steps(source_dir, recipe.with_(per_device_train_batch_size=rows // accumulation,
                                                       gradient_accumulation_steps=accumulation),
                              conversations, Path(out_dir) / "accumulated", steps, backend)
    from harness.backends import get

    return {**compare(full, accumulated, recipe), "device": "cuda" if get(backend).needs_gpu else "cpu"}


def main(argv=None) -> int:
    """`python -m harness.accumulation --backend unsloth --model DIR --out DIR`: ACCUM-EQUIVALENCE's measurement in a
    process of its own (Unsloth patches transformers and torch once per process), as JSON on the last line."""
    import argparse
    import json

    from harness.dataset import generate
    from harness.recipe import HANDBOOK

    parser = argparse.ArgumentParser(prog="python -m harness.accumulation", description=main.__doc__)
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--model", required=True, help="the model's checkpoint folder")
    parser.add_argument("--out", required=True, help="a folder for the two trainers' output_dir")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    conversations = [ex.messages for ex in generate(HANDBOOK.dataset_seed)["train"][:args.rows]]
    facts = accumulation_facts(Path(args.model), HANDBOOK, conversations, Path(args.out), args.accumulation, args.steps,
                               args.backend)
    print(json.dumps({**facts, "backend": args.backend, "model": Path(args.model).name}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
