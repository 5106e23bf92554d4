"""The run record: what a fine-tune actually did, read back from the trainer and the batches it saw."""

from __future__ import annotations

import time
from contextlib import contextmanager

from transformers import TrainerCallback

from harness.masking import IGNORE


class PhaseClock:
    """Wall time per phase (load, tokenize, train, evaluate, export), in the order they ran."""

    def __init__(self):
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(time.perf_counter() - start, 3)


def peak_memory() -> dict:
    """CUDA peak allocated/reserved (MiB) on a GPU; peak RSS (MiB) of this process everywhere."""
    import resource

    import torch

    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def on_training_batches(trainer, see) -> None:
    """Wrap the trainer's compute_loss so `see(inputs)` gets every training batch exactly as the model gets it."""
    compute_loss = trainer.compute_loss

    def seen(model, inputs, *args, **kwargs):
        if model.training:
            see(inputs)
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = seen


class StepRecorder(TrainerCallback):
    """Per-step loss, learning rate and grad norm; step times; and a check of every batch fed to the model.

    The lr is read from the optimizer at the start of each step: the value that step applies.
    Batches are captured where the trainer computes the loss, so the masking check sees exactly
    what the model was given; `reference` recomputes the expected labels from the batch's own ids.
    """

    def __init__(self, reference_labels=None, warmup_steps: int = 3):
        self.steps: list[dict] = []
        self.reference_labels = reference_labels
        self.warmup_steps = warmup_steps
        self.masking = {"batches": 0, "label_positions": 0, "trained_positions": 0, "contributing_masked": 0,
                        "masked_trainable": 0}
        self._t0 = None
        self._tokens = 0

    def attach(self, trainer) -> None:
        on_training_batches(trainer, self._capture)

    def _capture(self, kwargs):
        labels, ids = kwargs.get("labels"), kwargs.get("input_ids")
        if labels is None or ids is None:
            return
        self._tokens += int((labels != IGNORE).sum()) if kwargs.get("attention_mask") is None else int(kwargs["attention_mask"].sum())
        self.masking["batches"] += 1
        if self.reference_labels is None:
            return
        for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
            expected = self.reference_labels(row_ids)
            for got, want in zip(row_labels, expected):
                self.masking["label_positions"] += 1
                self.masking["trained_positions"] += got != IGNORE
                self.masking["contributing_masked"] += got != IGNORE and want == IGNORE
                self.masking["masked_trainable"] += got == IGNORE and want != IGNORE and want != 0

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self._t0 = time.perf_counter()
        self._tokens = 0
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self.steps.append({"step": state.global_step + 1, "lr": lr})

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[-1]["seconds"] = round(time.perf_counter() - self._t0, 4)
        self.steps[-1]["tokens"] = self._tokens

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not self.steps:
            return
        for key in ("loss", "grad_norm", "learning_rate"):
            if key in logs:
                self.steps[-1]["logged_lr" if key == "learning_rate" else key] = float(logs[key])
        if "eval_loss" in logs:
            self.steps[-1]["eval_loss"] = float(logs["eval_loss"])

    def throughput(self) -> dict:
        """Steady state (after the first `warmup_steps` steps, where compilation and caches land) vs warm-up."""
        timed = [s for s in self.steps if "seconds" in s]
        warm, steady = timed[: self.warmup_steps], timed[self.warmup_steps:]
        out = {"warmup_steps_excluded": len(warm), "warmup_seconds": round(sum(s["seconds"] for s in warm), 3)}
        if steady:
            seconds = sum(s["seconds"] for s in steady)
            out.update(steady_steps=len(steady), step_seconds_mean=round(seconds / len(steady), 4),
                       tokens_per_second=round(sum(s["tokens"] for s in steady) / seconds, 1) if seconds else None)
        return out


