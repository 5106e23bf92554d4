"""The handbook's three causal claims as controlled experiments: one value changed, data/steps/seed kept.

- LORA-MLP-ABLATION: all 7 targets (handbook) vs attention-only.
- MASK-STABILITY: train_on_responses_only (handbook) vs training on every token.
- LR-WARMUP-STABILITY: warmup 200 (handbook) vs none.

The handbook arm is shared by all three, so 3 seeds cost 4 arms × 3 runs. Each run is
`python -m harness finetune --arm A --seed S` in its own process (Unsloth patches globally), several
at once on one GPU: a 270M model's step is bound by kernel launches, not by the GPU, so concurrent
runs share it well. A run whose run.json is complete is not run again, so an interrupted set resumes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

EXPERIMENTS = {
    "LORA-MLP-ABLATION": ("handbook", "attention_only"),
    "MASK-STABILITY": ("handbook", "unmasked"),
    "LR-WARMUP-STABILITY": ("handbook", "no_warmup"),
}
SPIKE_WINDOW = 10  # a loss spike: a step whose loss exceeds twice the median of the 10 steps before it
SPIKE_FACTOR = 2.0


def run_dir(root: Path, arm: str, seed: int) -> Path:
    return Path(root) / f"{arm}-seed{seed}"


def _complete(folder: Path) -> bool:
    try:
        return json.loads((folder / "run.json").read_text()).get("complete") is True
    except (OSError, ValueError):
        return False


def run_arms(root: Path, arms: list[str], seeds: list[int], *, model: str, backend: str, max_steps: int | None = None,
             eval_limit: int | None = None, parallel: int = 4, extra_env: dict | None = None) -> dict:
    """Run every (arm, seed) not already complete, `parallel` at a time; return {run name: outcome}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    todo = [(arm, seed) for arm in arms for seed in seeds if not _complete(run_dir(root, arm, seed))]
    outcomes = {run_dir(root, a, s).name: "complete (earlier)" for a in arms for s in seeds if (a, s) not in todo}
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    bar = tqdm(total=len(todo), desc=f"experiment runs ({parallel} at a time)", unit="run")
    # One CPU thread per run or so (oversubscribed threads slowed 4 CPU runs on 2 cores ~10×), a smaller
    # generation batch and expandable segments so that several runs share one GPU's memory.
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // parallel)), "HARNESS_EVAL_BATCH": "16",
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **(extra_env or {})}
    while todo or running:
        while todo and len(running) < parallel:
            arm, seed = todo.pop(0)
            folder = run_dir(root, arm, seed)
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "harness", "finetune", "--model", model, "--backend", backend, "--arm", arm,
                   "--seed", str(seed), "--out", str(folder), "--no-export", "--no-base-eval"]
            cmd += ["--max-steps", str(max_steps)] if max_steps else []
            cmd += ["--eval-limit", str(eval_limit)] if eval_limit else []
            log = open(folder / "log.txt", "w")
            running[folder.name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time(), log)
        time.sleep(2)
        for name, (proc, start, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            tail = (root / name / "log.txt").read_text(errors="replace")[-1500:]
            outcomes[name] = (f"complete in {time.time() - start:.0f} s" if proc.returncode == 0
                              else f"failed (exit {proc.returncode}): {tail}")
            del running[name]
            bar.update()
    bar.close()
    return outcomes


def _runs(root: Path, arm: str, seeds: list[int]) -> list[dict]:
    runs = []
    for seed in seeds:
        folder = run_dir(root, arm, seed)
        if not _complete(folder):
            raise FileNotFoundError(f"{folder}/run.json is missing or incomplete: run the experiment arms first "
                                    f"(python -m harness experiments --out {root}); see {folder}/log.txt")
        runs.append(json.loads((folder / "run.json").read_text()))
    return runs


def loss_spikes(losses: list[float], window: int = SPIKE_WINDOW, factor: float = SPIKE_FACTOR) -> int:
    """Steps whose loss is more than `factor` × the median of the `window` steps before it."""
    return sum(1 for t in range(window, len(losses)) if losses[t] > factor * statistics.median(losses[t - window:t]))


def first_steps(run: dict, field: str, steps: int) -> list[float]:
    return [s[field] for s in run["steps"][:steps] if s.get(field) is not None]


def measurements(root: Path, seeds: list[int], warmup_steps: int = 200) -> dict:
    """Each experiment's measurements, in the shape its spec check reads (spec.lora/masking/schedule)."""
    runs = {arm: _runs(root, arm, seeds) for arm in ("handbook", "attention_only", "unmasked", "no_warmup")}  # read once
    exact = {arm: [r["eval"]["exact_match"] for r in rs] for arm, rs in runs.items()}
    val = {arm: [r["val_loss"] for r in rs] for arm, rs in runs.items()}
    spread = {arm: round(statistics.pstdev(v), 4) if len(v) > 1 else 0.0 for arm, v in val.items()}
    grad = {arm: [max(first_steps(r, "grad_norm", warmup_steps) or [0.0]) for r in runs[arm]]
            for arm in ("handbook", "no_warmup")}
    spikes = {arm: [loss_spikes(first_steps(r, "loss", warmup_steps)) for r in runs[arm]]
              for arm in ("handbook", "no_warmup")}
    return {
        "LORA-MLP-ABLATION": {"exact": {"all": exact["handbook"], "attention": exact["attention_only"]},
                              "loss": {"all": val["handbook"], "attention": val["attention_only"]}, "seeds": seeds},
        "MASK-STABILITY": {"exact": {"masked": exact["handbook"], "unmasked": exact["unmasked"]},
                           "loss_spread": {"masked": spread["handbook"], "unmasked": spread["unmasked"]},
                           "val_loss": {"masked": val["handbook"], "unmasked": val["unmasked"]}, "seeds": seeds},
        "LR-WARMUP-STABILITY": {"max_grad_norm": {"warmup": grad["handbook"], "none": grad["no_warmup"]},
                                "loss_spikes": {"warmup": spikes["handbook"], "none": spikes["no_warmup"]},
                                "exact": {"warmup": exact["handbook"], "none": exact["no_warmup"]}, "seeds": seeds},
    }


def all_arms() -> list[str]:
    return list(dict.fromkeys(arm for pair in EXPERIMENTS.values() for arm in pair))
