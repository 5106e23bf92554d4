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
    # 8 conversations of ~330 tokens per step: fits any 16 GB GPU in 4-bit, and 600 steps see each
    # of the 3,200 training conversations about 1.5 times.
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1  # set explicitly: Unsloth's banner showed 2 when none was set
    # The longest conversation (developer turn + two requests) is ~400 tokens; 512 leaves room and
    # keeps Unsloth's offloaded checkpointing active (it falls back below 512).
    max_seq_length: int = 512
    lora_dropout: float = 0.0  # Unsloth's fast path needs 0; PEFT's default would be 0.0 too
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    seed: int = 3407  # Unsloth's notebooks' seed
    dataset_seed: int = 0
    logging_steps: int = 1  # every step's loss/lr/grad-norm goes into the run record
    eval_limit: int = 320  # held-out conversations generated from per evaluation
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
EXPERIMENT_SEEDS = (3407, 3408, 3409)  # training seeds of every experiment arm (HANDBOOK.seed first)

# The experiments' arms: each changes one handbook value and keeps data, steps and seed.
ARMS = {
    "handbook": {},
    "attention_only": {"target_modules": ("q_proj", "k_proj", "v_proj", "o_proj")},
    "unmasked": {"train_on_responses_only": False},
    "no_warmup": {"warmup_steps": 0},
}
