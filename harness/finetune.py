"""The reference fine-tune end to end: load → LoRA → SFT with masking and schedule → evaluate → export.

Both backends run behind `finetune()`; the run record (run.json) holds what the trainer actually used,
per-step loss / lr / grad norm, throughput apart from warm-up, peak memory, and wall time per phase.
"""

from __future__ import annotations

import datetime as dt
import statistics
from pathlib import Path

import torch

from harness.recipe import ARMS, HANDBOOK, Recipe
from harness.run_record import PhaseClock, StepRecorder, peak_memory, write

BACKENDS = ("hf", "unsloth")


def effective_recipe(recipe: Recipe, backend: str, on_gpu: bool) -> tuple[dict, dict]:
    """(what this backend on this device is meant to run, declared deviations from the handbook with reasons)."""
    expected = recipe.to_dict()
    deviations = {}
    if backend == "hf":
        if not on_gpu:
            expected["load_in_4bit"] = False
            deviations["load_in_4bit"] = "CPU: bitsandbytes' 4-bit CPU kernels are far too slow to train; weights stay float32"
            expected["use_gradient_checkpointing"] = False
            deviations["use_gradient_checkpointing"] = "CPU: activations are small; recomputation only costs time"
            deviations["loss"] = ("CPU: TRL's fused LM-head loss is Triton-only; transformers' causal-LM cross entropy "
                                  "(the same mean over labels != -100) is used instead")
        else:
            expected["use_gradient_checkpointing"] = True
            deviations["use_gradient_checkpointing"] = "standard checkpointing: 'unsloth' mode exists only in Unsloth"
    return expected, deviations


def fidelity(trainer, model, expected: dict, passed_args: dict) -> dict:
    """RECIPE-FIDELITY: values read back from the trainer and the model, against what the run was meant to use."""
    args = trainer.args
    peft_config = next(iter(model.peft_config.values())) if hasattr(model, "peft_config") else None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    actual = {
        "r": getattr(peft_config, "r", None), "lora_alpha": getattr(peft_config, "lora_alpha", None),
        "target_modules": sorted(peft_config.target_modules) if peft_config else None,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps, "max_steps": args.max_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        # Unsloth's trainer sets max_length to None and truncates to the model's max_seq_length instead.
        "max_seq_length": args.max_length if args.max_length is not None else getattr(base, "max_seq_length", None),
        "seed": args.seed,
        "load_in_4bit": bool(getattr(base, "is_loaded_in_4bit", False)),
        "use_gradient_checkpointing": _checkpointing_mode(base, args),
    }
    want = {k: (sorted(expected[k]) if k == "target_modules" else expected[k]) for k in actual}
    mismatches = {k: {"recipe": want[k], "actual": actual[k]} for k in actual if actual[k] != want[k]}
    # Values the trainer holds that the run did not pass: libraries' defaults, listed so none is silent.
    notable = ("bf16", "fp16", "gradient_checkpointing", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon",
               "warmup_ratio", "packing", "padding_free", "completion_only_loss", "assistant_only_loss",
               "dataset_num_proc", "dataloader_drop_last", "group_by_length", "torch_compile")
    silent = {k: getattr(args, k) for k in notable if hasattr(args, k) and k not in passed_args}
    changed = {k: {"passed": v, "trainer": getattr(args, k)} for k, v in passed_args.items()
               if hasattr(args, k) and getattr(args, k) != v and not callable(v)}
    return {"actual": actual, "mismatches": mismatches, "silent": {**silent, **{f"changed:{k}": v for k, v in changed.items()}},
            "checked": len(actual)}


def _checkpointing_mode(model, args):
    """"unsloth" where Unsloth's offloaded checkpoint function is installed, True for standard, else False."""
    fn = torch.utils.checkpoint.checkpoint
    if "unsloth" in f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}".lower():
        return "unsloth"
    if getattr(model, "is_gradient_checkpointing", False) or args.gradient_checkpointing:
        return True
    return False


def finetune(model: str = "gemma3-270m", backend: str = "hf", recipe: Recipe = HANDBOOK, out_dir: Path | None = None,
             max_steps: int | None = None, batch_size: int | None = None, eval_limit: int | None = None,
             report_to: str = "none", export: bool = True, evaluate_base: bool = True, arm: str = "handbook",
             seed: int | None = None) -> dict:
    """Run the recipe (or one experiment arm of it, harness.recipe.ARMS) and return (and write) its run record."""
    from harness import dataset as ds
    from harness.evaluate import evaluate_split
    from harness.masking import reference_masker
    from harness.models import resolve

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    on_gpu = torch.cuda.is_available()
    if backend == "unsloth" and not on_gpu:
        raise RuntimeError("the unsloth backend needs a CUDA GPU (import unsloth fails without one); use --backend hf")
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: choose one of {', '.join(ARMS)}")
    changes = {k: v for k, v in {"max_steps": max_steps, "per_device_train_batch_size": batch_size,
                                 "eval_limit": eval_limit, "model": model, "seed": seed}.items() if v is not None}
    recipe = recipe.with_(**changes, **ARMS[arm])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_dir or Path("reports") / f"finetune-{backend}-{model.replace('/', '_')}-{stamp}")
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = PhaseClock()
    expected, deviations = effective_recipe(recipe, backend, on_gpu)
    record = {"schema": 1, "model": model, "backend": backend, "arm": arm, "recipe": recipe.to_dict(), "declared_deviations": deviations,
              "complete": False, "phases": clock.phases, "out_dir": str(out_dir)}
    write(record, out_dir / "run.json")

    def checkpoint_record():
        write(record, out_dir / "run.json")  # after every phase: a crash later loses nothing measured so far

    with clock.phase("load"):
        source = resolve(model)
        if backend == "unsloth":
            from harness.train_unsloth import load_unsloth

            peft_model, tokenizer = load_unsloth(source.path, recipe)
        else:
            from harness.lora import apply_lora
            from harness.tokenizer import load_tokenizer
            from harness.train_hf import load_model

            tokenizer = load_tokenizer(str(source.path))
            peft_model = apply_lora(load_model(source.path, recipe, expected["load_in_4bit"]), recipe)
    with clock.phase("tokenize"):
        data = ds.generate(recipe.dataset_seed)
        masker = reference_masker(tokenizer)
        from harness.train_hf import tokenize_conversations

        # hf: labels from the reference masker (or every token, unmasked). unsloth: input_ids only; its
        # train_on_responses_only writes the labels, or TRL trains on every token when it is off.
        # Validation labels stay masked in every arm, so val loss is over the answers alone and comparable.
        train_masker = masker if recipe.train_on_responses_only else list
        train_rows = tokenize_conversations(tokenizer, [e.messages for e in data["train"]], train_masker,
                                            recipe.max_seq_length)
        val_rows = tokenize_conversations(tokenizer, [e.messages for e in data["validation"][: recipe.eval_limit]], masker,
                                          recipe.max_seq_length)
        if backend == "unsloth":
            train_rows = [{"input_ids": r["input_ids"]} for r in train_rows]
    if evaluate_base:
        with clock.phase("evaluate_base"):
            record["base_eval"] = evaluate_split(peft_model, tokenizer, data["test"], recipe.eval_limit, recipe.max_new_tokens,
                                                 desc="evaluate base model")
    recorder = StepRecorder(reference_labels=masker)
    with clock.phase("build_trainer"):
        if backend == "unsloth":
            from harness.train_unsloth import build_unsloth_trainer

            trainer, passed = build_unsloth_trainer(peft_model, tokenizer, recipe, out_dir, train_rows, val_rows,
                                                    report_to, [recorder], masked=recipe.train_on_responses_only)
        else:
            from harness.train_hf import build_sft_trainer, sft_kwargs

            trainer = build_sft_trainer(source.path, recipe, out_dir, train_rows=train_rows, eval_rows=val_rows,
                                        model=peft_model, tokenizer=tokenizer, report_to=report_to, callbacks=[recorder])
            passed = sft_kwargs(recipe, out_dir, on_gpu=on_gpu, report_to=report_to)
        recorder.attach(trainer)
        from harness.masking import user_turn_facts

        # MASK-USER-TURNS from the labels the trainer will train on (Unsloth's masker or the reference one).
        sample = trainer.train_dataset.select(range(min(200, len(trainer.train_dataset))))
        # Without a labels column (unmasked arm, Unsloth) TRL's collator trains on the input ids themselves.
        labels = sample["labels"] if "labels" in sample.column_names else sample["input_ids"]
        record["mask_check"] = user_turn_facts(tokenizer, [e.messages for e in data["train"][: len(sample)]],
                                               list(zip(sample["input_ids"], labels)),
                                               ("unsloth.chat_templates" if backend == "unsloth" else "reference")
                                               if recipe.train_on_responses_only else "none (unmasked arm)",
                                               recipe.max_seq_length)
        record["masking_seconds"] = getattr(trainer, "_masking_seconds", None)
        record["fidelity"] = fidelity(trainer, peft_model, expected, passed)
    checkpoint_record()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with clock.phase("train"):
        train_output = trainer.train()
    record["steps"] = recorder.steps
    record["throughput"] = recorder.throughput()
    record["masking_in_batches"] = recorder.masking
    record["memory"] = peak_memory()
    record["train_runtime"] = train_output.metrics.get("train_runtime")
    checkpoint_record()
    with clock.phase("evaluate"):
        metrics = trainer.evaluate()
        record["val_loss"] = metrics.get("eval_loss")
        record["eval"] = evaluate_split(trainer.model, tokenizer, data["test"], recipe.eval_limit, recipe.max_new_tokens,
                                        desc="evaluate fine-tuned")
    losses = [s["loss"] for s in recorder.steps if "loss" in s]
    from harness.overfit import advice

    record["overfit"] = advice(losses, record["val_loss"])
    record["loss_first10"] = statistics.mean(losses[:10]) if losses else None
    record["loss_last10"] = statistics.mean(losses[-10:]) if losses else None
    checkpoint_record()
    if export:
        with clock.phase("export"):
            try:
                record["artifacts"] = export_artifacts(trainer.model, tokenizer, out_dir, backend, source.path)
            except Exception as exc:  # recorded; the run's other figures stand
                record["artifacts"] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
                checkpoint_record()
                raise
    record["complete"] = True
    write(record, out_dir / "run.json")
    return record


def export_artifacts(model, tokenizer, out_dir: Path, backend: str, source_dir: Path) -> dict:
    """Merge the adapters into a 16-bit checkpoint, then write the Q8_0 GGUF (Unsloth's exporter or this project's)."""
    merged_dir = out_dir / "merged"
    if backend == "unsloth":
        from harness.train_unsloth import export_unsloth_gguf

        tokenizer.name_or_path = str(source_dir)
        return export_unsloth_gguf(model, tokenizer, out_dir)
    # Merge into the 16-bit base, as Unsloth's merged_16bit does: merging into 4-bit layers would round
    # the update into NF4, and a bitsandbytes model cannot be cast to bf16 afterwards.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = out_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(str(source_dir), dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(merged_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(merged_dir))
    import shutil

    # The fast tokenizer saves tokenizer.json only; the GGUF vocabulary is read from the SentencePiece model.
    shutil.copy2(Path(source_dir) / "tokenizer.model", merged_dir / "tokenizer.model")
    artifacts = {"merged": str(merged_dir)}
    try:
        from harness.gguf_export import export_q8_0

        artifacts["gguf"] = str(export_q8_0(merged_dir, out_dir / "model-q8_0.gguf"))
    except ImportError as exc:
        artifacts["gguf_error"] = f"exporter unavailable: {exc}"
    return artifacts
