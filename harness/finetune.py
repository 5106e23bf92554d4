"""The reference fine-tune end to end: load → LoRA → SFT with masking and schedule → evaluate → export.

Every backend (harness.backends) runs behind `finetune()`; the run record (run.json) holds what the trainer actually used,
per-step loss / lr / grad norm, throughput apart from warm-up, peak memory, and wall time per phase.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path

import torch

from harness import backends
from harness.recipe import ARMS, HANDBOOK, Recipe
from harness.record_facts import write_record as write
from harness.run_record import PhaseClock, StepRecorder, peak_memory

MERGE_CHECK_PROMPTS = 8  # held-out prompts on which the merged checkpoint is compared with the trained model


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
    # warmup_ratio: deprecated in transformers 5.5 (None = unset; a value is copied into warmup_steps, which the recipe
    # checks), gone by 5.17 (warmup_steps < 1 is the ratio). Its unset None is not a default the run trains with.
    silent = {k: getattr(args, k) for k in notable if hasattr(args, k) and k not in passed_args
              and not (k == "warmup_ratio" and getattr(args, k) is None)}
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


class ReferenceFinetune:
    """One run of the recipe, in the stages a reader looks for: `setup` (load, tokenize, base evaluation, the trainer
    and what it will train on), `train`, `evaluate`, `save` (the exports). Each stage adds to `record`, which is
    written to run.json after every stage: a crash later loses nothing measured so far."""

    def __init__(self, model: str, backend: str, recipe: Recipe, out_dir: Path | None, report_to: str, arm: str,
                 evaluate_base: bool):
        self.impl = backends.get(backend)
        self.on_gpu = torch.cuda.is_available()
        if self.impl.needs_gpu and not self.on_gpu:
            raise RuntimeError(f"the {backend} backend needs a CUDA GPU; on a CPU use --backend hf")
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}: choose one of {', '.join(ARMS)}")
        self.recipe, self.model_name, self.report_to, self.evaluate_base = recipe, model, report_to, evaluate_base
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        self.out_dir = Path(out_dir or Path("reports") / f"finetune-{backend}-{model.replace('/', '_')}-{stamp}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.clock = PhaseClock()
        self.expected, deviations = self.impl.expected(recipe, self.on_gpu)
        self.record = {"schema": 1, "model": model, "backend": backend, "arm": arm, "recipe": recipe.to_dict(),
                       "declared_deviations": deviations, "complete": False, "phases": self.clock.phases,
                       "out_dir": str(self.out_dir)}
        self.checkpoint_record()

    def checkpoint_record(self) -> None:
        write(self.record, self.out_dir / "run.json")

    def load(self) -> None:
        from harness.models import resolve, would_materialize_here

        with self.clock.phase("load"):
            # imports first where the model is built or being built elsewhere (the GPU tier's pytest process builds it
            # meanwhile); never before building it here: Unsloth's import rewrites transformers' code for the process
            build_here = would_materialize_here(self.model_name)
            if not build_here:
                self.impl.prepare()
            started = time.perf_counter()
            self.source = resolve(self.model_name)
            self.record["model_resolve_seconds"] = round(time.perf_counter() - started, 3)  # a wait for it included
            if build_here:
                self.impl.prepare()
            self.peft_model, self.tokenizer = self.impl.load(self.source.path, self.recipe, self.expected)

    def evaluate_base_model(self) -> None:
        """The base model (the adapters as initialised: B = 0) on the first base_eval_limit held-out prompts."""
        from harness import dataset as ds
        from harness.evaluate import evaluate_split

        recipe = self.recipe
        with self.clock.phase("evaluate_base"):
            test = ds.generate(recipe.dataset_seed)["test"]  # (a copy from the per-process cache: setup's split)
            self.record["base_eval"] = evaluate_split(self.peft_model, self.tokenizer, test,
                                                      min(recipe.base_eval_limit, recipe.eval_limit),
                                                      recipe.max_new_tokens, desc="evaluate base model",
                                                      outputs_path=self.out_dir / "outputs-base.jsonl")

    def setup(self) -> None:
        from harness import dataset as ds
        from harness.backends.sft import tokenize_conversations
        from harness.masking import reference_masker, user_turn_facts

        recipe, impl, record = self.recipe, self.impl, self.record
        self.load()
        with self.clock.phase("tokenize"):
            self.data = ds.generate(recipe.dataset_seed)
            masker = reference_masker(self.tokenizer)
            # Labels from the reference masker (or every token, unmasked); each backend keeps what its trainer takes
            # (Unsloth: input_ids only). Validation labels stay masked in every arm: val loss is over the answers alone.
            train_masker = masker if recipe.train_on_responses_only else list
            train_rows = tokenize_conversations(self.tokenizer, [e.messages for e in self.data["train"]], train_masker,
                                                recipe.max_seq_length)
            val_rows = tokenize_conversations(self.tokenizer, [e.messages for e in self.data["validation"][: recipe.eval_limit]],
                                              masker, recipe.max_seq_length)
            train_rows = impl.train_rows(train_rows)
        if self.evaluate_base:
            self.evaluate_base_model()
        self.recorder = StepRecorder(reference_labels=masker)
        with self.clock.phase("build_trainer"):
            built = impl.build_trainer(self.peft_model, self.tokenizer, recipe, self.out_dir, self.source.path, train_rows,
                                       val_rows, self.report_to, [self.recorder], self.on_gpu)
            self.trainer = built.trainer
            self.recorder.attach(self.trainer)
            # MASK-USER-TURNS from the labels the trainer will train on (Unsloth's masker or the reference one).
            sample = self.trainer.train_dataset.select(range(min(200, len(self.trainer.train_dataset))))
            # Without a labels column (unmasked arm, Unsloth) TRL's collator trains on the input ids themselves.
            labels = sample["labels"] if "labels" in sample.column_names else sample["input_ids"]
            record["mask_check"] = user_turn_facts(self.tokenizer, [e.messages for e in self.data["train"][: len(sample)]],
                                                   list(zip(sample["input_ids"], labels)),
                                                   impl.masker_name if recipe.train_on_responses_only
                                                   else "none (unmasked arm)",
                                                   recipe.max_seq_length)
            record["masking_seconds"] = built.masking_seconds
            record["fidelity"] = fidelity(self.trainer, self.peft_model, self.expected, built.passed)
        self.checkpoint_record()

    def train(self) -> None:
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats()
        with self.clock.phase("train"):
            train_output = self.trainer.train()
        self.record.update(steps=self.recorder.steps, throughput=self.recorder.throughput(),
                           masking_in_batches=self.recorder.masking, memory=peak_memory(),
                           train_runtime=train_output.metrics.get("train_runtime"))
        self.checkpoint_record()

    def evaluate(self) -> None:
        from harness.evaluate import evaluate_split
        from harness.overfit import advice

        record = self.record
        with self.clock.phase("evaluate"):
            started = time.perf_counter()
            record["val_loss"] = self.trainer.evaluate().get("eval_loss")
            record["val_loss_seconds"] = round(time.perf_counter() - started, 3)  # the evaluate phase's parts (#13)
            record["eval"] = evaluate_split(self.trainer.model, self.tokenizer, self.data["test"], self.recipe.eval_limit,
                                            self.recipe.max_new_tokens, desc="evaluate fine-tuned",
                                            outputs_path=self.out_dir / "outputs-test.jsonl")
            # Dataset v2's other held-out sets, reported apart from the headline: the seen/unseen diagnostic cells and
            # the stress tier (objects and carriers never seen in training). Scaled with eval_limit for short runs.
            share = min(1.0, self.recipe.eval_limit / max(1, len(self.data["test"])))
            for split in ("diagnostic", "stress"):
                if self.data.get(split):
                    record[f"eval_{split}"] = evaluate_split(
                        self.trainer.model, self.tokenizer, self.data[split], max(1, round(share * len(self.data[split]))),
                        self.recipe.max_new_tokens, desc=f"evaluate {split}", outputs_path=self.out_dir / f"outputs-{split}.jsonl")
        losses = [s["loss"] for s in self.recorder.steps if "loss" in s]
        record["overfit"] = advice(losses, record["val_loss"])
        record["loss_first10"] = statistics.mean(losses[:10]) if losses else None
        record["loss_last10"] = statistics.mean(losses[-10:]) if losses else None
        self.checkpoint_record()

    def save(self) -> None:
        with self.clock.phase("export"):
            try:
                self.record["artifacts"] = self.impl.export(self.trainer.model, self.tokenizer, self.out_dir, self.source.path)
            except Exception as exc:  # recorded; the run's other figures stand
                self.record["artifacts"] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
                self.checkpoint_record()
                raise
        merged = self.record["artifacts"].get("merged")
        if merged:
            from harness.merge_check import merged_vs_trained, merged_weights_carry_adapter

            prompts = [ex.messages[:-1] for ex in self.data["test"][:MERGE_CHECK_PROMPTS]]
            ids = [self.tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"]
                   for p in prompts]
            try:
                self.record["merge_check"] = merged_vs_trained(self.trainer.model, Path(merged), ids)
                self.record["merge_check"].update(
                    merged_weights_carry_adapter(self.trainer.model, Path(merged), Path(self.source.path)))
            except Exception as exc:  # recorded as such: MERGE-IS-TRAINED then fails for want of its measurement
                self.record["merge_check"] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        self.checkpoint_record()


def finetune(model: str = "gemma3-270m", backend: str = "hf", recipe: Recipe = HANDBOOK, out_dir: Path | None = None,
             max_steps: int | None = None, batch_size: int | None = None, eval_limit: int | None = None,
             report_to: str = "none", export: bool = True, evaluate_base: bool = True, arm: str = "handbook",
             seed: int | None = None, base_eval_only: bool = False) -> dict:
    """Run the recipe (or one experiment arm of it, harness.recipe.ARMS) and return (and write) its run record;
    `base_eval_only`: load and score the base model only (the record's base_eval, the same as a full run's)."""
    changes = {k: v for k, v in {"max_steps": max_steps, "per_device_train_batch_size": batch_size,
                                 "eval_limit": eval_limit, "model": model, "seed": seed}.items() if v is not None}
    run = ReferenceFinetune(model, backend, recipe.with_(**changes, **ARMS.get(arm, {})), out_dir, report_to, arm,
                            evaluate_base)
    if base_eval_only:  # the GPU tier runs it beside the fine-tune (tests/gpu/conftest.py): off its critical path
        run.load()
        run.evaluate_base_model()
        run.record.update(complete=True, base_eval_only=True)
        run.checkpoint_record()
        return run.record
    run.setup()
    run.train()
    run.evaluate()
    if export:
        run.save()
    run.record["complete"] = True
    run.checkpoint_record()
    return run.record
