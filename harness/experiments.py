"""The handbook's three causal claims as controlled experiments: one value changed, data/steps/seed kept.

- LORA-MLP-ABLATION: all 7 targets (handbook) vs attention-only.
- MASK-STABILITY: train_on_responses_only (handbook) vs training on every token.
- LR-WARMUP-STABILITY: warmup 200 (handbook) vs none, clipped at 1.0 as the recipe trains; and the same two
  without gradient clipping (`*_noclip`), where an explosion can show.

The handbook arm is shared by all three. Each run is `python -m harness finetune --arm A --seed S` in its own
process (Unsloth patches globally), several at once on each GPU (harness.run_queue). A run whose run.json is complete
is not run again, so an interrupted set resumes. Each claim's effect is the paired difference in held-out exact match
with a hierarchical-bootstrap CI (harness.experiment_stats, judged in spec.experiment_design); the unclipped arms run
on the first UNCLIPPED_SEEDS seeds only (they are judged by explosions, not by a CI).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from harness.experiment_stats import outcomes_from_record
from harness.recipe import ARMS, HANDBOOK
from harness.run_queue import RunQueue, complete, visible_devices

# claim -> (treatment = the handbook's arm, control = the arm that changes one value)
EXPERIMENTS = {
    "LORA-MLP-ABLATION": ("handbook", "attention_only"),
    "MASK-STABILITY": ("handbook", "unmasked"),
    "LR-WARMUP-STABILITY": ("handbook", "no_warmup"),
}
UNCLIPPED = ("handbook_noclip", "no_warmup_noclip")  # LR-WARMUP-STABILITY's arms without gradient clipping
UNCLIPPED_SEEDS = 5  # an explosion is counted per run: 5 seeds a side (the minimum) suffice
# Every run is scored on the whole held-out test split (the recipe's eval_limit, 320, is a prefix of it): the design's
# power assumes ~2,000 items in ~200 combinations (spec/experiment_design.py; `--eval-limit` overrides).
EVAL_LIMIT = 1_000_000
SPIKE_WINDOW = 10  # a loss spike: a step whose loss exceeds twice the median of the 10 steps before it
SPIKE_FACTOR = 2.0


def seeds_for(arm: str, seeds: list[int]) -> list[int]:
    """The seeds an arm runs: all of them, or the first UNCLIPPED_SEEDS for the unclipped arms."""
    return list(seeds[:UNCLIPPED_SEEDS]) if arm in UNCLIPPED else list(seeds)


def run_dir(root: Path, arm: str, seed: int) -> Path:
    return Path(root) / f"{arm}-seed{seed}"


def arm_runs(root: Path, arms: list[str], seeds: list[int], *, model: str, backend: str, max_steps: int | None = None,
             eval_limit: int | None = None) -> list[tuple[str, Path, list[str]]]:
    """(name, folder, command) of each (arm, seed) run: `python -m harness finetune --arm A --seed S`, scored on
    `eval_limit` held-out items (None: EVAL_LIMIT, the whole test split)."""
    eval_limit = EVAL_LIMIT if eval_limit is None else eval_limit
    runs = []
    for arm in arms:
        for seed in seeds_for(arm, seeds):
            folder = run_dir(root, arm, seed)
            cmd = [sys.executable, "-m", "harness", "finetune", "--model", model, "--backend", backend, "--arm", arm,
                   "--seed", str(seed), "--out", str(folder), "--no-export", "--no-base-eval"]
            cmd += ["--max-steps", str(max_steps)] if max_steps else []
            cmd += ["--eval-limit", str(eval_limit)]
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
             devices: list[str] | None = None, **kwargs) -> dict:
    """Run every (arm, seed) not already complete, `parallel` at a time on each GPU (every visible GPU unless
    `devices` names them: each run gets its GPU through CUDA_VISIBLE_DEVICES); return {run name: outcome}."""
    devices = visible_devices() if devices is None else devices
    queue = RunQueue(parallel, extra_env, desc="experiment runs", devices=devices if len(devices) > 1 else None)
    names = queue_arms(queue, root, arms, seeds, **kwargs)
    return queue.start().wait(names)


def _runs(root: Path, arm: str, seeds: list[int]) -> dict[int, tuple[dict, Path]]:
    runs = {}
    for seed in seeds:
        folder = run_dir(root, arm, seed)
        if not complete(folder):
            raise FileNotFoundError(f"{folder}/run.json is missing or incomplete: run the experiment arms first "
                                    f"(python -m harness experiments --out {root}); see {folder}/log.txt")
        runs[seed] = (json.loads((folder / "run.json").read_text()), folder)
    return runs


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def loss_spikes(losses: list[float], window: int = SPIKE_WINDOW, factor: float = SPIKE_FACTOR) -> int:
    """Steps whose loss is more than `factor` × the median of the `window` steps before it (finite losses only:
    NaN/inf steps are counted apart, `nonfinite_steps`)."""
    losses = _finite(losses)
    return sum(1 for t in range(window, len(losses)) if losses[t] > factor * statistics.median(losses[t - window:t]))


def first_steps(run: dict, field: str, steps: int) -> list[float]:
    return [s[field] for s in run["steps"][:steps] if s.get(field) is not None]


def nonfinite_steps(run: dict) -> int:
    """Steps whose logged loss or gradient norm is NaN or infinite, over the whole run."""
    return sum(1 for s in run["steps"] if any(isinstance(s.get(k), float) and not math.isfinite(s[k])
                                              for k in ("loss", "grad_norm")))


def loss_fall(run: dict) -> float | None:
    """Mean train loss of the first 10 steps over that of the last 10 (the run record's, else from its steps)."""
    first, last = run.get("loss_first10"), run.get("loss_last10")
    if first is None or last is None:
        losses = _finite(s.get("loss") for s in run["steps"])
        if len(losses) < 20:
            return None
        first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    if not (math.isfinite(first) and math.isfinite(last)) or last <= 0:
        return None
    return round(first / last, 2)


def item_outcomes(run: dict, folder: Path | None = None) -> tuple[list, str]:
    """(items, cluster key) of a run: eval.outcomes, their combination id taken from the stored outputs
    (outputs-test.jsonl, evaluation v2: `template`) where the outcomes do not carry one; else the function."""
    outputs = folder / "outputs-test.jsonl" if folder is not None else None
    if outputs is not None and outputs.is_file():
        combos = {}
        for line in outputs.read_text().splitlines():
            row = json.loads(line)
            if row.get("template") is not None:
                combos[str(row["id"])] = row["template"]
        outcomes = run.get("eval", {}).get("outcomes") or []
        if combos and outcomes and all(str(o["id"]) in combos for o in outcomes):
            run = {**run, "eval": {**run["eval"], "outcomes": [{"combination": combos[str(o["id"])], **o}
                                                                for o in outcomes]}}
    items, key = outcomes_from_record(run)
    return [list(i) for i in items], key


def _arm_facts(runs: dict[int, tuple[dict, Path]], warmup_steps: int) -> dict:
    """Per seed (in seed order): exact match, JSON validity, val loss, loss fall; grad norm and stability figures."""
    recs = [r for r, _ in runs.values()]
    return {
        "exact": [r["eval"]["exact_match"] for r in recs],
        "json_valid": [r["eval"].get("json_valid_rate") for r in recs],
        "val_loss": [r.get("val_loss") for r in recs],
        "loss_fall": [loss_fall(r) for r in recs],
        "max_grad_norm": [max(_finite(first_steps(r, "grad_norm", warmup_steps)), default=None) for r in recs],
        "loss_spikes": [loss_spikes(first_steps(r, "loss", warmup_steps)) for r in recs],
        "nonfinite_steps": [nonfinite_steps(r) for r in recs],
    }


def _experiment(items: dict, facts: dict, treatment: str, control: str) -> dict:
    """One comparison's measurements: both arms' per-item outcomes per seed and per-run facts."""
    pair = (treatment, control)
    return {"treatment": treatment, "control": control, "seeds": list(items[treatment]),
            "cluster_key": "/".join(sorted({key for arm in pair for _, key in items[arm].values()})),
            "outcomes": {arm: {seed: got for seed, (got, _) in items[arm].items()} for arm in pair},
            "runs": {arm: facts[arm] for arm in pair}}


def measurements(root: Path, seeds: list[int], warmup_steps: int = HANDBOOK.warmup_steps) -> dict:
    """Each experiment's measurements, in the shape its spec check reads (spec.experiment_design)."""
    arms = all_arms()
    runs = {arm: _runs(root, arm, seeds_for(arm, seeds)) for arm in arms}  # each run record read once
    facts = {arm: _arm_facts(runs[arm], warmup_steps) for arm in arms}
    items = {arm: {seed: item_outcomes(record, folder) for seed, (record, folder) in runs[arm].items()} for arm in arms}
    out = {claim: _experiment(items, facts, *pair) for claim, pair in EXPERIMENTS.items()}
    warmup = out["LR-WARMUP-STABILITY"]
    warmup["unclipped"] = _experiment(items, facts, *UNCLIPPED)
    warmup["warmup_steps"] = warmup_steps
    return out


def summary(facts: dict) -> dict:
    """measurements() without the per-item outcomes (for results.json's extras: the items are in each run.json)."""
    def strip(m):
        return {k: (strip(v) if k == "unclipped" else v) for k, v in m.items() if k != "outcomes"}
    return {claim: strip(m) for claim, m in facts.items()}


def all_arms() -> list[str]:
    return list(dict.fromkeys([*(arm for pair in EXPERIMENTS.values() for arm in pair), *UNCLIPPED]))


assert set(all_arms()) <= set(ARMS), "every experiment arm is a recipe arm (harness.recipe.ARMS)"
