"""The `unsloth` backend: exactly the handbook's API (GPU only; `import unsloth` fails without CUDA)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from harness.recipe import HANDBOOK, Recipe


def _unsloth_env() -> None:
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Before `import unsloth`: unsloth_zoo reads UNSLOTH_LLAMA_CPP_PATH once, at import (measured on the
    # runner: set later, save_pretrained_gguf still git-cloned llama.cpp into ~/.unsloth).
    from harness.llama_cpp_vendor import find_tree, unsloth_env

    tree = find_tree()
    if tree is not None:
        for key, value in unsloth_env(tree).items():
            os.environ.setdefault(key, value)


def import_unsloth() -> None:
    """`import unsloth` with the environment it reads at import (_unsloth_env); a no-op once imported."""
    _unsloth_env()
    import unsloth  # noqa: F401  (must precede transformers/trl/peft patches)


def log_recompiles() -> bool:
    """$HARNESS_LOG_RECOMPILES=1: torch's recompile and graph-break logs on, after `import unsloth`. Unsloth Zoo pops
    TORCH_LOGS and sets every torch log to CRITICAL at import (unsloth_zoo/patching_utils.py, patch_torch_compile)
    unless UNSLOTH_COMPILE_DEBUG=1, which also turns off inductor's caches and compiles on one thread: so
    TORCH_LOGS=recompiles printed nothing on the H200 (2026-11-29). The GPU tier sets it for the reference run, whose
    second training step took 67.0 s: a recompile, confirmed by this log in session 17 (the decoder layer recompiled for
    the two mask functions, grad mode and the packed length; reports/examples/h200-2026-11-29-gpu-tier-s17); the tier
    summarizes it (harness.record_facts.dynamo_recompiles). It also prints the recompile limit in force: Unsloth Zoo
    sets it to 1024 at the same import, not torch's default 8."""
    if os.environ.get("HARNESS_LOG_RECOMPILES") != "1":
        return False
    import torch

    try:
        torch._logging.set_logs(recompiles=True, graph_breaks=True)
    except (AttributeError, TypeError) as exc:  # a torch without these artifacts: a diagnostic, never the run's failure
        print(f"HARNESS_LOG_RECOMPILES: torch {torch.__version__} cannot log recompiles here ({exc})", flush=True)
        return False
    from harness.record_facts import RECOMPILE_LIMIT, RECOMPILES_ON

    print(RECOMPILES_ON, flush=True)
    config = torch._dynamo.config  # recompile_limit since torch 2.6, cache_size_limit before
    limit = getattr(config, "recompile_limit", None) or getattr(config, "cache_size_limit", None)
    if isinstance(limit, int):
        print(f"{RECOMPILE_LIMIT}{limit}", flush=True)
    return True


def load_unsloth(model_dir: Path, recipe: Recipe = HANDBOOK, *, target_modules=None, gradient_checkpointing=None,
                 max_seq_length: int | None = None):
    """FastModel.from_pretrained(load_in_4bit, use_gradient_checkpointing) then FastModel.get_peft_model(r, alpha, targets)."""
    import_unsloth()
    from unsloth import FastModel

    log_recompiles()

    if os.environ.get("HARNESS_FAULT"):  # a fault-injection run of the GPU tier (tests/faults/faults_gpu.py) only;
        from harness.pytest_plugin import apply_planted_fault_in_child  # (pytest is a test extra: imported only then)

        apply_planted_fault_in_child(gpu=True)

    checkpointing = recipe.use_gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    model, tokenizer = FastModel.from_pretrained(
        model_name=str(model_dir), max_seq_length=max_seq_length or recipe.max_seq_length,
        load_in_4bit=recipe.load_in_4bit, use_gradient_checkpointing=checkpointing, full_finetuning=False,
    )
    model = FastModel.get_peft_model(
        model, r=recipe.r, lora_alpha=recipe.lora_alpha, target_modules=list(target_modules or recipe.target_modules),
        lora_dropout=recipe.lora_dropout, bias="none", use_gradient_checkpointing=checkpointing,
        random_state=recipe.seed,
    )
    return model, tokenizer


def build_unsloth_trainer(model, tokenizer, recipe: Recipe, out_dir: Path, train_rows, val_rows, report_to, callbacks,
                          masked: bool = True):
    """TRL SFTTrainer + unsloth.chat_templates.train_on_responses_only, as the handbook writes it.
    Returns (trainer, the SFT arguments passed, seconds Unsloth's masking took or None)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from harness.backends.sft import sft_kwargs

    # Unsloth applies its own checkpointing in get_peft_model; TRL's default (True) would re-enable HF's.
    kwargs = sft_kwargs(recipe, out_dir, on_gpu=True, report_to=report_to, gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=SFTConfig(**kwargs), train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(val_rows) if val_rows else None, processing_class=tokenizer,
                         callbacks=list(callbacks))
    masking_seconds = None
    if masked:
        from unsloth.chat_templates import train_on_responses_only

        start = time.perf_counter()
        # num_proc=1: with worker processes the 32 MB tokenizer is pickled into each (60 s for 16 rows, notes).
        trainer = train_on_responses_only(trainer, instruction_part=recipe.instruction_part,
                                          response_part=recipe.response_part, num_proc=1)
        masking_seconds = round(time.perf_counter() - start, 3)
    return trainer, kwargs, masking_seconds


@contextlib.contextmanager
def working_directory(path: Path):
    """chdir to `path` for the block (the fine-tune's own process: nothing else runs in it meanwhile)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def export_unsloth_gguf(model, tokenizer, out_dir: Path, source_dir: Path) -> dict:
    """model.save_pretrained_gguf(dir, tokenizer, quantization_method="Q8_0"), offline; Unsloth writes `<dir>_gguf/`.

    llama.cpp comes from the tree vendored from the llama-cpp-python sdist (harness.llama_cpp_vendor):
    its converter, and a llama-quantize built from it, which Unsloth requires to exist even for Q8_0.
    This project's exporter then writes a second file from the checkpoint Unsloth merged, and the two
    files are compared (GGUF-Q8-EXPORT's two-exporter bounds). Where Unsloth's export fails, the error
    is recorded and the project's exporter writes the file from a separate 16-bit merge.
    """
    from harness.gguf_export import export_q8_0
    from harness.llama_cpp_vendor import NO_TREE, QUANTIZER, build_quantizer, find_tree

    target = Path(out_dir).resolve() / "unsloth_export"
    artifacts: dict = {}
    tree = find_tree()
    if tree is None:
        artifacts["gguf_unsloth_error"] = NO_TREE
    else:
        if not (tree / QUANTIZER).exists():
            artifacts["llama_quantize_build"] = build_quantizer(tree)
        # The variables pointing Unsloth at this tree were set before `import unsloth` (_unsloth_env).
        artifacts["llama_cpp"] = os.environ.get("UNSLOTH_LLAMA_CPP_PATH")
        try:
            start = time.perf_counter()
            # In the run's own folder: Unsloth's converter writes `<model>.Q8_0.gguf` into the working directory, then
            # moves it to `<target>_gguf/` (unsloth/save.py, 2026.10.9). Four fine-tunes exporting at once from one
            # checkout (the GPU fault catalog, 2026-11-28) took each other's files: one run got another's model, three
            # failed with "Conversion failed ... check disk space" or FileNotFoundError.
            with working_directory(target.parent):
                model.save_pretrained_gguf(str(target), tokenizer, quantization_method="q8_0")
            artifacts["gguf_unsloth_seconds"] = round(time.perf_counter() - start, 1)
            found = sorted(Path(str(target) + "_gguf").glob("*.gguf")) + sorted(target.glob("*.gguf"))
            artifacts["gguf_unsloth"] = str(found[0]) if found else None
        except Exception as exc:  # recorded, not fatal: the project's exporter still writes a file
            artifacts["gguf_unsloth_error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
    merged = target if artifacts.get("gguf_unsloth") else Path(out_dir) / "merged"
    if merged != target:
        model.save_pretrained_merged(str(merged), tokenizer, save_method="merged_16bit")
    artifacts["merged"] = str(merged)
    source_dir = Path(source_dir)  # the model folder the run loaded: its tokenizer files are the faithful ones
    for name in ("tokenizer.model", "tokenizer_config.json"):
        # The GGUF vocabulary is read from the SentencePiece model, and llama.cpp's converter reads the
        # user-defined pieces from tokenizer_config.json's added_tokens_decoder (harness.tokenizer).
        if (source_dir / name).exists() and (name == "tokenizer_config.json" or not (merged / name).exists()):
            shutil.copy2(source_dir / name, merged / name)
    artifacts["gguf"] = str(export_q8_0(merged, Path(out_dir) / "model-q8_0.gguf"))
    return artifacts
