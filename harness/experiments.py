"""The handbook's three causal claims as controlled experiments: one value changed, data/steps/seed kept.

- LORA-MLP-ABLATION: all 7 targets (handbook) vs attention-only.
- MASK-STABILITY: train_on_responses_only (handbook) vs training on every token.
- LR-WARMUP-STABILITY: warmup 200 (handbook) vs none.

The handbook arm is shared by all three, so 3 seeds cost 4 arms × 3 runs. Each run is
`python -m harness finetune --arm A --seed S` in its own process (Unsloth patches globally), several
at once on one GPU (harness.run_queue). A run whose run.json is complete is not run again, so an
interrupted set resumes.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from harness.recipe import ARMS, HANDBOOK
from harness.run_queue import RunQueue, complete

EXPERIMENTS = {
    "LORA-MLP-ABLATION": ("handbook", "attention_only"),
    "MASK-STABILITY": ("handbook", "unmasked"),
    "LR-WARMUP-STABILITY": ("handbook", "no_warmup"),
}
SPIKE_WINDOW = 10  # a loss spike: a step whose loss exceeds twice the median of the 10 steps before it
SPIKE_FACTOR = 2.0


def run_dir(root: Path, arm: str, seed: int) -> Path:
    return Path(root) / f"{arm}-seed{seed}"


def arm_runs(root: Path, arms: list[str], seeds: list[int], *, model: str, backend: str, max_steps: int | None = None,
             eval_limit: int | None = None) -> list[tuple[str, Path, list[str]]]:
    """(name, folder, command) of each (arm, seed) run: `python -m harness finetune --arm A --seed S`."""
    runs = []
    for arm in arms:
        for seed in seeds:
            folder = run_dir(root, arm, seed)
            cmd = [sys.executable, "-m", "harness", "finetune", "--model", model, "--backend", backend, "--arm", arm,
                   "--seed", str(seed), "--out", str(folder), "--no-export", "--no-base-eval"]
            cmd += ["--max-steps", str(max_steps)] if max_steps else []
            cmd += ["--eval-limit", str(eval_limit)] if eval_limit else []
            runs.append((folder.name, folder, cmd))
    return runs


def queue_arms(queue: RunQueue, root: Path, arms: list[str], seeds: list[int], **kwargs) -> list[str]:
    """Add every (arm, seed) run to `queue` (complete ones are reused); return their names."""
    Path(root).mkdir(parents=True, exist_ok=True)
    runs = arm_runs(root, arms, seeds, **kwargs)
    for name, folder, cmd in runs:
        queue.add(name, folder, cmd)
    return [name for name, _, _ in runs]


def run_arms(root: Path, arms: list[str], seeds: list[int], *, parallel: int = 4, extra_env: dict | None = None,
             **kwargs) -> dict:
    """Run every (arm, seed) not already complete, `parallel` at a time; return {run name: outcome}."""
    queue = RunQueue(parallel, extra_env, desc="experiment runs")
    names = queue_arms(queue, root, arms, seeds, **kwargs)
    return queue.start().wait(names)


def _runs(root: Path, arm: str, seeds: list[int]) -> list[dict]:
    runs = []
    for seed in seeds:
        folder = run_dir(root, arm, seed)
        if not complete(folder):
            raise FileNotFoundError(f"{folder}/run.json is missing or incomplete: run the experiment arms first "
                                    f"(python -m harness experiments --out {root}); see {folder}/log.txt")
        runs.append(json.loads((folder / "run.json").read_text()))
    return runs


def loss_spikes(losses: list[float], window: int = SPIKE_WINDOW, factor: float = SPIKE_FACTOR) -> int:
    """Steps whose loss is more than `factor` × the median of the `window` steps before it."""
    return sum(1 for t in range(window, len(losses)) if losses[t] > factor * statistics.median(losses[t - window:t]))


def first_steps(run: dict, field: str, steps: int) -> list[float]:
    return [s[field] for s in run["steps"][:steps] if s.get(field) is not None]


def measurements(root: Path, seeds: list[int], warmup_steps: int = HANDBOOK.warmup_steps) -> dict:
    """Each experiment's measurements, in the shape its spec check reads (spec.lora/masking/schedule)."""
    runs = {arm: _runs(root, arm, seeds) for arm in ARMS}  # each run record read once
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
