"""The `unsloth` backend: exactly the handbook's API (harness.train_unsloth; GPU only, `import unsloth` needs CUDA)."""

from __future__ import annotations

from pathlib import Path

from harness.backends import Backend, BuiltTrainer, register


class UnslothBackend(Backend):
    name = "unsloth"
    needs_gpu = True
    masker_name = "unsloth.chat_templates"

    def prepare(self) -> None:
        from harness.train_unsloth import import_unsloth

        import_unsloth()

    def load(self, source_dir: Path, recipe, expected: dict):
        from harness.train_unsloth import load_unsloth

        return load_unsloth(source_dir, recipe)

    def train_rows(self, rows: list[dict]) -> list[dict]:
        # input_ids only: Unsloth's train_on_responses_only writes the labels (or TRL trains on every token when off)
        return [{"input_ids": r["input_ids"]} for r in rows]

    def build_trainer(self, model, tokenizer, recipe, out_dir: Path, source_dir: Path, train_rows, val_rows,
                      report_to: str, callbacks: list, on_gpu: bool) -> BuiltTrainer:
        from harness.train_unsloth import build_unsloth_trainer

        trainer, passed, masking_seconds = build_unsloth_trainer(model, tokenizer, recipe, out_dir, train_rows, val_rows,
                                                                 report_to, callbacks,
                                                                 masked=recipe.train_on_responses_only)
        return BuiltTrainer(trainer, passed, masking_seconds)

    def export(self, model, tokenizer, out_dir: Path, source_dir: Path) -> dict:
        from harness.train_unsloth import export_unsloth_gguf

        return export_unsloth_gguf(model, tokenizer, out_dir, source_dir)


register(UnslothBackend())
