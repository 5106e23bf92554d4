"""The `hf` backend: plain transformers + peft + bitsandbytes + trl (harness.train_hf), CPU or GPU."""

from __future__ import annotations

from pathlib import Path

from harness.backends import Backend, BuiltTrainer, register


class HfBackend(Backend):
    name = "hf"
    needs_gpu = False
    masker_name = "reference"

    def expected(self, recipe, on_gpu: bool) -> tuple[dict, dict]:
        expected = recipe.to_dict()
        deviations = {}
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

    def load(self, source_dir: Path, recipe, expected: dict):
        from transformers import set_seed

        from harness.lora import apply_lora
        from harness.tokenizer import load_tokenizer
        from harness.train_hf import load_model

        tokenizer = load_tokenizer(str(source_dir))
        model = load_model(source_dir, recipe, expected["load_in_4bit"])
        # lora_A's random init draws from the global RNG: seeded here with the recipe's seed, as Unsloth's
        # get_peft_model(random_state=seed) does. Unseeded, the tiny run's losses depended on what the process had
        # drawn before (test file alone vs inside the suite: 12.4488 vs 12.4478 for the first 10 steps).
        set_seed(recipe.seed)
        return apply_lora(model, recipe), tokenizer

    def build_trainer(self, model, tokenizer, recipe, out_dir: Path, source_dir: Path, train_rows, val_rows,
                      report_to: str, callbacks: list, on_gpu: bool) -> BuiltTrainer:
        from harness.backends.sft import sft_kwargs
        from harness.train_hf import build_sft_trainer

        passed = sft_kwargs(recipe, out_dir, on_gpu=on_gpu, report_to=report_to)  # the trainer's config is built from it
        trainer = build_sft_trainer(source_dir, recipe, out_dir, train_rows=train_rows, eval_rows=val_rows, model=model,
                                    tokenizer=tokenizer, report_to=report_to, callbacks=callbacks, sft_args=passed)
        return BuiltTrainer(trainer, passed)

    def export(self, model, tokenizer, out_dir: Path, source_dir: Path) -> dict:
        """Merge into the 16-bit base, as Unsloth's merged_16bit does (merging into 4-bit layers would round the
        update into NF4, and a bitsandbytes model cannot be cast to bf16 afterwards), then this project's exporter."""
        import shutil

        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        merged_dir, adapter_dir = out_dir / "merged", out_dir / "adapter"
        model.save_pretrained(str(adapter_dir))
        base = AutoModelForCausalLM.from_pretrained(str(source_dir), dtype=torch.bfloat16)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(str(merged_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(merged_dir))
        # The fast tokenizer saves tokenizer.json only; the GGUF vocabulary is read from the SentencePiece model.
        shutil.copy2(Path(source_dir) / "tokenizer.model", merged_dir / "tokenizer.model")
        artifacts = {"merged": str(merged_dir)}
        try:
            from harness.gguf_export import export_q8_0

            artifacts["gguf"] = str(export_q8_0(merged_dir, out_dir / "model-q8_0.gguf"))
        except ImportError as exc:
            artifacts["gguf_error"] = f"exporter unavailable: {exc}"
        return artifacts


register(HfBackend())
