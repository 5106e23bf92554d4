"""Planted regressions of §4-§5 (schedule, pipeline, llama.cpp reading the export)."""

from __future__ import annotations

from fault import Fault


def _cosine_clock_from_zero():
    """transformers' cosine lambda starts its cosine at step 0 instead of at the end of warmup (the handbook's
    formula): LR-COSINE and LR-HANDBOOK-FORMULA both see it."""
    import math

    import transformers.optimization as opt

    def unshifted(current_step, *, num_warmup_steps, num_training_steps, num_cycles=0.5):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        progress = float(current_step) / float(max(1, num_training_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    opt._get_cosine_schedule_with_warmup_lr_lambda = unshifted


def _optimizer_steps_lost():
    """accelerate believes gradients never sync (as in its gradient-accumulation bugs): optimizer.step is skipped."""
    from accelerate.optimizer import AcceleratedOptimizer

    AcceleratedOptimizer.step = lambda self, closure=None: None


def _token_types_all_normal():
    """gguf-py writes every token as NORMAL: llama.cpp then splits <start_of_turn> etc. into text pieces."""
    import gguf

    original = gguf.GGUFWriter.add_token_types

    def add_token_types(self, types):
        original(self, [1 for _ in types])

    gguf.GGUFWriter.add_token_types = add_token_types


def _merge_drops_adapter():
    """PEFT's LoRA merge writes nothing into the base weight (as Unsloth's merges did: unsloth #869, #2009): the merged
    checkpoint, and every export made from it, is the base model."""
    from peft.tuners.lora import layer

    layer.Linear.merge = lambda self, safe_merge=False, adapter_names=None: None


LR = "tests/claims/test_schedule.py"
GGUF = "tests/claims/test_gguf.py"
E2E = "tests/slow/test_finetune_tiny.py"

FAULTS = [
    Fault("cosine-clock-from-zero", "4", "the cosine after warmup is not shifted by W", "LR-HANDBOOK-FORMULA", (LR,),
          _cosine_clock_from_zero),
    Fault("optimizer-steps-lost", "5", "the optimizer step is skipped (gradients never 'synced')", "E2E-REFERENCE", (E2E,),
          _optimizer_steps_lost),
    Fault("merge-drops-adapter", "5", "the LoRA merge leaves the base weights unchanged", "MERGE-IS-TRAINED", (E2E,),
          _merge_drops_adapter),
    Fault("gguf-token-types-normal", "5", "every GGUF token typed NORMAL (control tokens lost)", "GGUF-LLAMACPP", (GGUF,),
          _token_types_all_normal),
]
