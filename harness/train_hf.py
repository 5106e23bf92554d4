"""The `hf` backend: the recipe with plain transformers + peft + bitsandbytes + trl.

NF4 with double quant where a GPU is present (bitsandbytes' CPU kernels train far too slowly), standard
gradient checkpointing on the GPU, and this project's reference masker for the labels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.backends.sft import cpu_sft_trainer_class, fused_lm_head_available, sft_config, tokenize_conversations
from harness.recipe import Recipe


def load_model(model_dir: Path, recipe: Recipe, load_in_4bit: bool):
    from transformers import AutoModelForCausalLM

    on_gpu = torch.cuda.is_available()
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        from harness.quant import load_4bit

        model = load_4bit(model_dir, device_map={"": 0} if on_gpu else "cpu")
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(recipe.use_gradient_checkpointing))
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    return model.to("cuda") if on_gpu else model


def build_sft_trainer(model_dir, recipe: Recipe, out_dir, *, train_rows=None, eval_rows=None, load_in_4bit=None,
                      report_to="none", callbacks=(), model=None, tokenizer=None, sft_args: dict | None = None):
    """An SFTTrainer for the recipe. `train_rows` is tokenized rows, or an int: that many rows of the dataset.
    `sft_args`: the SFTConfig values to build the trainer's config from (default: the recipe's, sft_kwargs)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from harness.dataset import generate
    from harness.lora import apply_lora
    from harness.masking import reference_masker
    from harness.tokenizer import load_tokenizer

    on_gpu = torch.cuda.is_available()
    if load_in_4bit is None:
        load_in_4bit = recipe.load_in_4bit and on_gpu
    tokenizer = tokenizer or load_tokenizer(str(model_dir))
    if train_rows is None or isinstance(train_rows, int):
        data = generate(recipe.dataset_seed)
        train = data["train"][: train_rows or None]
        train_rows = tokenize_conversations(tokenizer, [e.messages for e in train], reference_masker(tokenizer),
                                            recipe.max_seq_length)
    if model is None:
        model = apply_lora(load_model(Path(model_dir), recipe, load_in_4bit), recipe)
    if sft_args is not None:
        from trl import SFTConfig

        args = SFTConfig(**sft_args)
    else:
        args = sft_config(recipe, Path(out_dir), on_gpu=on_gpu, report_to=report_to)
    trainer_cls = SFTTrainer if fused_lm_head_available() else cpu_sft_trainer_class()
    return trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                      eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                      processing_class=tokenizer, callbacks=list(callbacks))
