"""Claim measurements read from a fine-tune's run record (run.json): one reading for the CPU tier's tiny run,
the GPU tier's reference run, and the unit tests that replay stored GPU records (reports/examples)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from spec.schedule import recorded_lr_facts

E2E_PHASES = ("load", "tokenize", "train", "evaluate", "export")


def write_record(record: dict, path: Path) -> Path:
    """A run record written atomically (a reader sees the old file or the new one). Here, not in harness.run_record:
    that module imports transformers, and the record's readers need not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=str))
    os.replace(tmp, path)
    return path


def timeline_phases(record: dict) -> dict | None:
    """A run record's phases ({name: seconds}, in the order they ran) for the report's timeline, if it has them; its
    "train" split in two where the record times its first steps (throughput.warmup_seconds: where compilation lands):
    "train: first N steps" and "train", their sum the phase's. On an H200 (2026-11-29) the reference run's first three
    steps took 167.8 s of its 281.5 s train phase, beside the probes compiling theirs: the timeline shows it."""
    import math

    def is_seconds(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    phases = record.get("phases") if isinstance(record, dict) else None
    if not isinstance(phases, dict):
        return None
    phases = {str(k): float(v) for k, v in phases.items() if is_seconds(v)}
    warm = record.get("throughput") if isinstance(record.get("throughput"), dict) else {}
    first, steps = warm.get("warmup_seconds"), warm.get("warmup_steps_excluded")
    if not ("train" in phases and is_seconds(first) and isinstance(steps, int) and steps > 0
            and 0 < first <= phases["train"]):
        return phases
    split = {}
    for name, seconds in phases.items():
        if name == "train":
            split[f"train: first {steps} steps"] = round(float(first), 3)
            split["train"] = round(seconds - first, 3)
        else:
            split[name] = seconds
    return split


RECOMPILES_ON = "HARNESS_LOG_RECOMPILES: torch's recompile and graph-break logs are on"
RECOMPILE_LIMIT = "HARNESS_LOG_RECOMPILES: torch's recompile limit is "  # followed by the number, from the run's torch


def dynamo_recompiles(log_text: str) -> dict:
    """What a run's log says torch's compiler did again (its output with $HARNESS_LOG_RECOMPILES=1,
    harness.train_unsloth.log_recompiles): each recompiled function with how many times and how many compiled entries
    its frame reached, the recompile limit the run's torch had (printed by log_recompiles), the functions at it, the
    limit's hits (torch falls back to running that function uncompiled: a slowdown, never a wrong answer) and graph
    breaks. `logged` False: the run did not have those logs on, so zero counts say nothing.

    Why: on an H200 (2026-11-29, reports/examples/h200-2026-11-29-gpu-tier-s17 and -s18) the reference run's first
    three steps took 187-192 s, and transformers' Gemma3DecoderLayer.forward (Unsloth's compiled block) reached 8
    compiled entries during training, create_block_mask 10. torch's default limit is 8, but Unsloth Zoo's import sets
    recompile_limit (and cache_size_limit) to 1024 (unsloth_zoo/patching_utils.py, patch_torch_compile, 2026.10.9):
    session 17 read the 8 entries against the default and called the layer one shape class from running uncompiled;
    with the run's own limit recorded, at_the_limit says it."""
    recompiled: dict[str, int] = {}
    entries: dict[str, int] = {}  # compiled entries of each function's frame: [frame/n] names the n-th recompile
    limit_hits, graph_breaks, limit = [], 0, None
    for line in log_text.splitlines():
        if "[__recompiles] Recompiling function " in line:
            function, _, where = line.split("Recompiling function ", 1)[1].strip().partition(" in ")
            name = f"{function} in {'/'.join(where.split('/')[-2:])}" if where else function  # the file's last folders
            recompiled[name] = recompiled.get(name, 0) + 1
            match = re.search(r"\] \[\d+/(\d+)\] \[__recompiles\]", line)
            entries[name] = max(entries.get(name, 0), int(match.group(1)) + 1 if match else recompiled[name] + 1)
        elif "torch._dynamo hit config." in line:
            limit_hits.append(line.split("torch._dynamo hit ", 1)[1].strip()[:200])
        elif "[__graph_breaks] Graph break" in line:
            graph_breaks += 1
        elif line.startswith(RECOMPILE_LIMIT) and line[len(RECOMPILE_LIMIT):].strip().isdigit():
            limit = int(line[len(RECOMPILE_LIMIT):].strip())
    return {"logged": RECOMPILES_ON in log_text, "recompiles": sum(recompiled.values()),
            "recompiled": dict(sorted(recompiled.items(), key=lambda kv: -kv[1])),
            "entries": dict(sorted(entries.items(), key=lambda kv: -kv[1])), "recompile_limit": limit,
            "at_the_limit": sorted(name for name, n in entries.items() if limit is not None and n >= limit),
            "recompile_limit_hits": limit_hits, "graph_breaks": graph_breaks}


def base_eval_dir(e2e_dir: Path) -> Path:
    """Where the GPU tier's reference run has its base model scored, in a process of its own beside it
    (`finetune --base-eval-only`; tests/gpu/conftest.py queues it, tests/gpu/test_unsloth_tier.py merges it)."""
    return Path(e2e_dir) / "base-eval"


def merge_base_eval(record: dict, e2e_dir: Path) -> dict:
    """The reference run's record with the base evaluation of its companion run (same model, recipe and prompts;
    AssertionError if its model or recipe differ), its outputs file copied beside the run's (where the record's
    relative name points), written back to the run's run.json: a stored or reused record is whole."""
    e2e_dir = Path(e2e_dir)
    folder = base_eval_dir(e2e_dir)
    base = json.loads((folder / "run.json").read_text())
    assert base["model"] == record["model"] and base["recipe"] == record["recipe"], "the base run scored another setup"
    if base["base_eval"].get("outputs_file"):
        shutil.copyfile(folder / base["base_eval"]["outputs_file"], e2e_dir / base["base_eval"]["outputs_file"])
    merged = {**record, "base_eval": base["base_eval"],
              "base_eval_run": {"phases": base.get("phases"), "beside": "its own process, beside the fine-tune"}}
    write_record(merged, e2e_dir / "run.json")
    return merged


def e2e(record: dict, model: str, backend: str) -> dict:
    """E2E-REFERENCE: phases in order, figures present, the loss's fall, the export written."""
    figures = {"steps": record.get("steps"), "throughput": (record.get("throughput") or {}).get("tokens_per_second"),
               "memory": record.get("memory"), "val_loss": record.get("val_loss"), "eval": record.get("eval"),
               "base_eval": record.get("base_eval"), "fidelity": record.get("fidelity"),
               "gguf": (record.get("artifacts") or {}).get("gguf")}
    return {"phases": [p for p in record.get("phases", ()) if p in E2E_PHASES],
            "missing_figures": sorted(k for k, v in figures.items() if v in (None, [], {})),
            "run_record": record.get("out_dir"), "model": model, "backend": backend,
            "steps": len(record.get("steps") or ()), "loss_first10": record.get("loss_first10"),
            "loss_last10": record.get("loss_last10"), "export_recorded": bool(figures["gguf"])}


def overfit(record: dict) -> dict:
    """CHECK-OVERFIT on the run: the detector's reading of the train loss next to the validation loss."""
    o = record.get("overfit") or {}
    return {"run_plateau": o.get("plateau"), "train_loss_final": o.get("train_loss_final"), "val_loss": o.get("val_loss"),
            "gap": o.get("gap"), "handbook_says": o.get("handbook_says"), "median_last_50": o.get("median")}


def lr(record: dict) -> dict:
    """LR-COSINE on the run: the lr every step applied vs warmup-then-cosine with the run's own recipe."""
    recipe = record["recipe"]
    steps = record.get("steps") or []
    return recorded_lr_facts(steps, recipe["learning_rate"], recipe["warmup_steps"], len(steps))


def gguf_exists(record: dict) -> bool:
    path = (record.get("artifacts") or {}).get("gguf")
    return bool(path) and Path(path).is_file() and Path(path).stat().st_size > 0


def unsloth_gguf(record: dict) -> Path:
    """The GGUF Unsloth's own export wrote, for the tests that read it. Where the run wrote none because it found no
    vendored llama.cpp tree (harness.train_unsloth records llama_cpp_vendor.NO_TREE and goes on), the claims on that
    file cannot be checked: harness.doctor.EnvironmentProblem (a skip with the fix), not a failure. Judged from what
    the run recorded, not from this machine now: a run reused from an earlier session is judged by its own cause.
    Any other missing export is the pipeline's: AssertionError with Unsloth's error."""
    art = record.get("artifacts") or {}
    if art.get("gguf_unsloth"):
        return Path(art["gguf_unsloth"])
    from harness.llama_cpp_vendor import NO_TREE

    if art.get("gguf_unsloth_error") == NO_TREE:
        from harness.doctor import EnvironmentProblem, Health

        raise EnvironmentProblem(Health("llama.cpp converter", False, "the run found llama.cpp's converter not vendored",
                                        "python -m harness llama-cpp --build (fetches the llama-cpp-python sdist from "
                                        "PyPI once), then run the fine-tune again", ("GGUF-Q8-EXPORT", "GGUF-HELDOUT")))
    raise AssertionError(f"Unsloth's export wrote no GGUF: {art.get('gguf_unsloth_error')}")
