"""CHECK-OUTPUT's paired regression test: per-prompt outcomes of a recorded run, kept in the repo, and an exact
McNemar test of a new run against them (same prompts, so the noise of the prompt sample cancels).

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


def paired(eval_result: dict) -> dict:
    """The `paired` measurement of CHECK-OUTPUT for a run's eval (with `outcomes` and `dataset_fingerprint`)."""
    fp = eval_result.get("dataset_fingerprint")
    base = load(fp) if fp else None
    if base is None:
        return {"pairs": 0, "baseline": None,
                "reason": f"no recorded per-prompt baseline for dataset {fp} (spec/baselines/): paired test not run"}
    now = {o["id"]: o["exact"] for o in eval_result.get("outcomes", ())}
    return {**mcnemar(base["outcomes"], now), "baseline": path_for(fp).name, "baseline_exact_match": base["exact_match"]}


def record(run_json: Path, reason: str) -> Path:
    """Write the baseline of a run record's held-out eval (spec/baselines/check-output-<fingerprint>.json)."""
    if not reason.strip():
        raise ValueError("a baseline is recorded only with a written reason (--reason)")
    run = json.loads(Path(run_json).read_text())
    e = run["eval"]
    data = {"dataset_fingerprint": e["dataset_fingerprint"], "exact_match": e["exact_match"],
            "outcomes": {o["id"]: o["exact"] for o in e["outcomes"]}, "reason": reason,
            "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "from_run": str(run_json), "model": run.get("model"), "backend": run.get("backend"),
            "environment": run.get("environment")}
    path = path_for(e["dataset_fingerprint"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path
