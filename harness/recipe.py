"""The handbook's recipe, defined once. Every run and every claim reads its values from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class Recipe:
    # --- the handbook's values -------------------------------------------------------------
    model: str = "gemma3-270m"  # handbook: unsloth/functiongemma-270m-it (same architecture and vocabulary)
    load_in_4bit: bool = True
    use_gradient_checkpointing: str | bool = "unsloth"
    r: int = 32
    lora_alpha: int = 64
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 200
    instruction_part: str = "<start_of_turn>user\n"
    response_part: str = "<start_of_turn>model\n"
    train_on_responses_only: bool = True  # the handbook masks user turns; the MASK-STABILITY experiment turns it off
    gguf_quantization: str = "Q8_0"
    # --- values the handbook leaves open -----------------------------------------------------
    # 600 steps: three times the warmup, so the 200 warmup steps are a third of the run and matter.
    max_steps: int = 600
    # 8 conversations of ~330 tokens per step: fits any 16 GB GPU in 4-bit; 600 steps see 4,800 of dataset v2's
    # 12,000 training conversations (0.4 epoch: no conversation is seen twice).
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1  # set explicitly: Unsloth's banner showed 2 when none was set
    # The longest conversation (developer turn + two requests) is ~400 tokens; 512 leaves room and
    # keeps Unsloth's offloaded checkpointing active (it falls back below 512).
    max_seq_length: int = 512
    lora_dropout: float = 0.0  # Unsloth's fast path needs 0; PEFT's default would be 0.0 too
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    # The handbook sets no clipping, so the trainer clips at TrainingArguments' default 1.0 (RECIPE-FIDELITY lists it
    # among the values set silently); None = no clipping (LR-WARMUP-STABILITY's unclipped arms, where an explosion
    # can show). Passed to the trainer only where an arm changes it (harness.backends.sft.sft_kwargs).
    max_grad_norm: float | None = 1.0
    seed: int = 3407  # Unsloth's notebooks' seed
    dataset_seed: int = 0
    logging_steps: int = 1  # every step's loss/lr/grad-norm goes into the run record
    # Held-out conversations generated from per evaluation: the whole test split of dataset v2 (224 held-out
    # combinations × 10). The base model is scored on one item per combination (it scores 0: it answers in prose).
    eval_limit: int = 2240
    base_eval_limit: int = 224
    max_new_tokens: int = 64  # the longest answer JSON is ~45 tokens
    extra: dict = field(default_factory=dict)

    def with_(self, **changes) -> "Recipe":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data


HANDBOOK = Recipe()

# Facts of the model and the test design that several modules need; defined here once.
GEMMA3_VOCAB_SIZE = 262144  # Gemma 3's vocabulary (the embedded GGUF's token table)
EOS_ID, END_OF_TURN_ID = 1, 106  # Gemma 3's <eos> and <end_of_turn>: where greedy generation stops
# Training seeds of every experiment arm (HANDBOOK.seed first). 10: the design whose simulated power is in
# tests/unit/test_experiment_stats.py (seed-to-seed SD ~3 points, ~2,000 held-out items in ~200 combinations: a 10-point
# effect decided in ≥ 99% of reruns, 6.4 points in ~95%); the minimum is 5 (a bound of every experiment claim).
EXPERIMENT_SEEDS = tuple(range(3407, 3417))

# The experiments' arms: each changes one handbook value and keeps data, steps and seed.
ARMS = {
    "handbook": {},
    "attention_only": {"target_modules": ("q_proj", "k_proj", "v_proj", "o_proj")},
    "unmasked": {"train_on_responses_only": False},
    "no_warmup": {"warmup_steps": 0},
    # LR-WARMUP-STABILITY without gradient clipping (every arm above clips at 1.0), so that an explosion can show.
    "handbook_noclip": {"max_grad_norm": None},
    "no_warmup_noclip": {"warmup_steps": 0, "max_grad_norm": None},
}
