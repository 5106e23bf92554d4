"""CHECK-OUTPUT's paired regression test: per-prompt outcomes of a recorded run, kept in the repo, and a paired test
of a new run against them (same prompts, so the noise of the prompt sample cancels).

The test's unit is the held-out combination (the cluster of ~10 items), not the item: outcomes within a cluster move
together. Measured (reports/examples/h200x2-2026-11-28-bigpools): a held-out city is copied right in all of its items
or in none (الخرطوم 0/12, عجمان 13/13), and which cities fail changes between runs (طرابلس 14/15 at 600 steps, 1/15
at 1200). An item-level McNemar test counts one flipped city as 12-15 independent losses: three such flips against
one gain give p ≈ 0.0007 and a false regression. The cluster test flips the sign of whole clusters' differences.

A baseline is recorded per dataset (its test split's fingerprint) with `python -m harness record-output-baseline
RUN_JSON --reason "..."`, only with a written reason; it names the environment it came from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

BASELINES = Path(__file__).resolve().parents[1] / "spec" / "baselines"


def fingerprint(examples) -> str:
    """sha256 (first 16 hex) of the evaluated examples' ids and messages: which prompts the outcomes belong to."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.messages], ensure_ascii=False, sort_keys=True).encode() + b"\n")
    return h.hexdigest()[:16]


def path_for(dataset_fingerprint: str) -> Path:
    return BASELINES / f"check-output-{dataset_fingerprint}.json"


def load(dataset_fingerprint: str) -> dict | None:
    path = path_for(dataset_fingerprint)
    return json.loads(path.read_text()) if path.is_file() else None


def binomial_tail(k: int, n: int) -> float:
    """P(X ≥ k) for X ~ Binomial(n, ½)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n if n else 1.0


def mcnemar(baseline: dict[str, bool], now: dict[str, bool]) -> dict:
    """Paired outcomes on the prompts both runs scored: `worse` right before and wrong now, `better` the reverse;
    p_value = P(at least `worse` of the discordant pairs go that way by chance) (one-sided exact McNemar)."""
    shared = sorted(set(baseline) & set(now))
    worse = sum(baseline[k] and not now[k] for k in shared)
    better = sum(now[k] and not baseline[k] for k in shared)
    return {"pairs": len(shared), "worse": worse, "better": better,
            "p_value": binomial_tail(worse, worse + better), "unmatched": len(set(now) - set(baseline))}


CLUSTER_RESAMPLES = 20000
CLUSTER_SEED = 0


def cluster_paired(baseline: dict[str, bool], now: dict[str, bool], clusters: dict[str, str],
                   resamples: int = CLUSTER_RESAMPLES, seed: int = CLUSTER_SEED) -> dict:
    """Paired sign-flip test over clusters: d_c = items right now − right before in cluster c (prompts both runs
    scored); under no change each d_c is as likely negative as positive, so p_value = P(Σ ±d_c ≤ Σ d_c) over random
    signs (one-sided, Monte Carlo with a fixed seed: the same outcomes give the same p). The item-level McNemar
    figures ride along for reading, not for the decision."""
    import numpy as np

    items = mcnemar(baseline, now)
    diffs: dict[str, int] = {}
    for key in sorted(set(baseline) & set(now)):  # sorted: the same outcomes meet the same signs (hash order varies)
        c = clusters.get(key, key)
        diffs[c] = diffs.get(c, 0) + int(now[key]) - int(baseline[key])
    d = np.array([diffs[c] for c in sorted(diffs) if diffs[c]], dtype=np.int64)
    total = int(d.sum()) if d.size else 0
    if d.size:
        signs = np.random.default_rng(seed).choice(np.array([-1, 1], dtype=np.int64), size=(resamples, d.size))
        p_value = float((1 + int(((signs * d).sum(axis=1) <= total).sum())) / (1 + resamples))
    else:
        p_value = 1.0
    return {"method": "sign-flip test over held-out combinations (clusters), one-sided", "pairs": items["pairs"],
            "clusters": len(diffs), "clusters_worse": int((d < 0).sum()), "clusters_better": int((d > 0).sum()),
            "difference": total, "p_value": p_value, "worse": items["worse"], "better": items["better"],
            "item_mcnemar_p": items["p_value"], "unmatched": items["unmatched"]}


def paired(eval_result: dict) -> dict:
    """The `paired` measurement of CHECK-OUTPUT for a run's eval (with `outcomes` and `dataset_fingerprint`)."""
    fp = eval_result.get("dataset_fingerprint")
    base = load(fp) if fp else None
    if base is None:
        return {"pairs": 0, "baseline": None,
                "reason": f"no recorded per-prompt baseline for dataset {fp} (spec/baselines/): paired test not run"}
    outcomes = eval_result.get("outcomes", ())
    now = {o["id"]: o["exact"] for o in outcomes}
    # Same fingerprint, same prompts: the clusters of the run's own outcomes are the baseline's.
    clusters = {o["id"]: o.get("cluster", o["id"]) for o in outcomes}
    return {**cluster_paired(base["outcomes"], now, clusters), "baseline": path_for(fp).name,
            "baseline_exact_match": base["exact_match"]}


ENVIRONMENT_KEYS = ("packages", "gpu", "python", "platform", "git_commit", "source_digest", "leg")


def record(run_json: Path, reason: str, results: Path | None = None) -> Path:
    """Write the baseline of a run record's held-out eval (spec/baselines/check-output-<fingerprint>.json), with the
    environment it came from: the run record's, else that of the results.json of the same run (`results`; a
    reference fine-tune's run.json records no versions, the GPU tier's results.json does). A baseline that cannot name
    its versions is refused: a golden value is only as good as the environment block next to it."""
    if not reason.strip():
        raise ValueError("a baseline is recorded only with a written reason (--reason)")
    run = json.loads(Path(run_json).read_text())
    e = run["eval"]
    environment = run.get("environment")
    if environment is None and results is not None:
        data = json.loads(Path(results).read_text())
        env = data.get("environment") or {}
        environment = {k: env[k] for k in ENVIRONMENT_KEYS if k in env} | {"run": data.get("run")}
    if not environment:
        raise ValueError(f"{run_json} names no environment: pass --results with the results.json of the same run "
                         "(the GPU tier writes it beside the run record)")
    data = {"dataset_fingerprint": e["dataset_fingerprint"], "exact_match": e["exact_match"],
            "outcomes": {o["id"]: o["exact"] for o in e["outcomes"]}, "reason": reason,
            "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "from_run": str(run_json), "model": run.get("model"), "backend": run.get("backend"),
            "environment": environment}
    path = path_for(e["dataset_fingerprint"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path
