"""`python -m harness certify --gpu`: every catalog claim measured on a GPU runner, in one report.

The CPU tier runs there too, on the same versions, but in its own pytest process with CUDA hidden
(`CUDA_VISIBLE_DEVICES=""`): its recorded expectations are the CPU's (e.g. the tiny fine-tune trains in
float32 without 4-bit on a CPU), so it must see a CPU. It runs first, then the GPU tier: run beside the
GPU tier's 13 training processes it was starved (an H100 runner, 16 cores, 2026-11-27: ~30 of its ~125
tests in 18 min). The two results are merged claim by claim: evidence of every context, a regression in
either tier is a regression, environment problems of either.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.results import NO_GPU_REASON, RED_BY_TEST_FAILURE, certify_exit_code, reports_root, write_run

CPU_TIER_ARGS = ["-m", "not gpu"]
GPU_TIER_ARGS = ["-m", "gpu"]
NOT_RUN = "not run in this session"


def _ran(entry: dict) -> bool:
    return entry.get("verdict") != "skip"


def merge_claim(parts: list[tuple[str, dict]]) -> dict:
    """One claim's entries from several tiers (label, entry) as one entry."""
    ran = [(label, e) for label, e in parts if _ran(e)]
    if not ran:  # the most informative skip: an environment problem, any real reason, "not run", then "needs a CUDA
        # GPU" (the CPU tier's, where CUDA was hidden on purpose: it would hide why the GPU tier left the claim out)
        ranked = sorted(parts, key=lambda p: (not p[1].get("environment_problem"), p[1].get("reason") == NO_GPU_REASON,
                                              NOT_RUN in (p[1].get("reason") or "")))
        merged = copy.deepcopy(ranked[0][1])
        merged["tests"] = [t for _, e in parts for t in e.get("tests", [])]
        return merged
    merged = copy.deepcopy(ran[-1][1])
    evidence, expected, contexts, violations = {}, {}, [], []
    for label, entry in ran:
        for context, value in (entry.get("evidence") or {}).items():
            key = context if context not in evidence else f"{context} [{label}]"
            evidence[key] = value
            expected[key] = (entry.get("expected_by_context") or {}).get(context, entry.get("expected"))
            contexts.append(key)
        violations += [f"[{label}] {v}" for v in entry.get("violations") or []]
    regressing = [e for _, e in ran if e.get("regression")]
    if regressing and all(e.get(RED_BY_TEST_FAILURE) for e in regressing):  # no tier's evidence moved
        merged[RED_BY_TEST_FAILURE] = True
    else:
        merged.pop(RED_BY_TEST_FAILURE, None)
    merged.update(evidence=evidence, expected_by_context=expected, contexts=sorted(contexts), violations=violations,
                  regression=bool(regressing), verdict=regressing[0]["verdict"] if regressing else ran[-1][1]["verdict"],
                  tests=[t for _, e in parts for t in e.get("tests", [])],
                  reason="; ".join(e["reason"] for _, e in ran if e.get("reason")))
    problems = [e["environment_problem"] for _, e in parts if e.get("environment_problem")]
    if problems:
        merged["environment_problem"] = problems[0]
    else:
        merged.pop("environment_problem", None)
    return merged


def merge(parts: list[tuple[str, dict]], run_id: str) -> dict:
    """Several tiers' results.json (label, data), in run order, as one run's results."""
    by_id: dict[str, list] = {}
    for label, data in parts:
        for entry in data["claims"]:
            by_id.setdefault(entry["id"], []).append((label, entry))
    claims = [merge_claim(entries) for entries in by_id.values()]
    problems: dict[str, list[str]] = {}
    for entry in claims:
        if entry.get("environment_problem"):
            problems.setdefault(entry["environment_problem"], []).append(entry["id"])
    extras: dict = {}
    durations: dict = {}
    for _, data in parts:
        extras.update(data.get("extras") or {})
        durations.update(data.get("durations") or {})
    left_out = extras.get("experiments_not_run")
    if left_out:  # a claim the CPU tier checked was not left out of the merged run
        unchecked = [cid for cid in left_out.get("claims", []) if any(c["id"] == cid and not _ran(c) for c in claims)]
        if unchecked:
            extras["experiments_not_run"] = {**left_out, "claims": unchecked}
        else:
            extras.pop("experiments_not_run")
    last = parts[-1][1]
    return {"schema": last.get("schema"), "run": run_id, "complete": all(d.get("complete") for _, d in parts),
            "started": min(d.get("started") or "" for _, d in parts), "finished": last.get("finished"),
            "previous_run": None, "environment": {**(last.get("environment") or {}),
                                                  "tiers": {label: d.get("run") for label, d in parts}},
            "claims": claims, "environment_problems": [{"reason": r, "claims": ids} for r, ids in problems.items()]
            + unbound_problems(parts, problems),
            "extras": extras, "durations": dict(sorted(durations.items(), key=lambda kv: -kv[1])),
            "timeline": merged_timeline(parts)}


def unbound_problems(parts: list[tuple[str, dict]], claimed: dict[str, list[str]]) -> list[dict]:
    """The tiers' environment problems of checks bound to no claim (a reason a claim's problem does not already
    name), their tests gathered over the tiers."""
    tests: dict[str, list[str]] = {}
    for _, data in parts:
        for problem in data.get("environment_problems") or []:
            if not problem.get("claims") and problem["reason"] not in claimed:
                tests.setdefault(problem["reason"], []).extend(problem.get("tests") or [])
    return [{"reason": reason, "claims": [], "tests": names} for reason, names in tests.items()]


def merged_timeline(parts: list[tuple[str, dict]]) -> dict:
    """The tiers' timelines on one axis: each shifted by its start after the first tier's (the timeline's `t0`, else
    results.json `started` in whole seconds), its tests named with the tier. A tier without a timeline adds nothing; one
    whose start cannot be read is left out (`not_aligned`), not drawn over another."""
    import datetime as dt

    def start(data) -> float | None:
        t0 = (data.get("timeline") or {}).get("t0")
        if isinstance(t0, (int, float)):
            return float(t0)
        try:
            return dt.datetime.fromisoformat(data["started"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return None

    parts = [(label, data) for label, data in parts if data.get("timeline")]
    starts = [start(data) for _, data in parts]
    t0 = min((t for t in starts if t is not None), default=None)
    tests, runs, written, not_aligned = {}, [], 0.0, []
    for (label, data), t in zip(parts, starts):
        timeline = data["timeline"]
        if t is None:
            not_aligned.append(label)
            continue
        shift = t - t0
        tests.update({f"{nodeid} [{label}]": [round(a + shift, 1), round(b + shift, 1)]
                      for nodeid, (a, b) in (timeline.get("tests") or {}).items()})
        runs += [{**run, "queue": f"{label}: {run['queue']}", "start_s": round(run["start_s"] + shift, 1),
                  "end_s": None if run.get("end_s") is None else round(run["end_s"] + shift, 1)}
                 for run in timeline.get("runs") or []]
        written = max(written, (timeline.get("written_s") or 0.0) + shift)
    return {"unit": "seconds from the first tier's start", **({"t0": t0} if t0 is not None else {}),
            "written_s": round(written, 1), "tests": tests, "runs": runs,
            **({"not_aligned": not_aligned} if not_aligned else {})}


def _load(root: Path) -> dict | None:
    try:
        return json.loads((root / "latest" / "results.json").read_text())
    except (OSError, ValueError):
        return None


def certify_all(model: str, pytest_args: list[str], tests: Path, self_tests: bool = False,
                experiments: bool = True) -> int:
    """Both tiers (the CPU tier with CUDA hidden, then the GPU tier), merged into reports/<run>/; the suite's
    self-tests only with `self_tests` (as `certify` on the CPU); the experiment claims unless `experiments` is False
    (pytest's --experiments: a GPU target of their own, over an hour on one GPU)."""
    root = reports_root()
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{os.getpid()}-all-tiers"
    base = [sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider", f"--model={model}"]
    if not self_tests:
        base.append("--no-self-tests")
    cpu_root, gpu_root = root / f"{run_id}.cpu", root / f"{run_id}.gpu"
    root.mkdir(parents=True, exist_ok=True)
    print(f"CPU tier (CUDA hidden), then the GPU tier: logs {root / run_id}.*.log", flush=True)
    with open(root / f"{run_id}.cpu.log", "w") as cpu_log:
        cpu_code = subprocess.run(base + CPU_TIER_ARGS, stdout=cpu_log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "HARNESS_REPORTS": str(cpu_root)}).returncode
    print(f"CPU tier: pytest exit {cpu_code}", flush=True)
    gpu_code = subprocess.run(base + GPU_TIER_ARGS + (["--experiments"] if experiments else []) + pytest_args,
                              env={**os.environ, "HARNESS_REPORTS": str(gpu_root)}).returncode
    print(f"GPU tier: pytest exit {gpu_code}")
    parts = [(label, data) for label, data in (("cpu tier", _load(cpu_root)), ("gpu tier", _load(gpu_root))) if data]
    if len(parts) < 2:
        print("a tier wrote no results: the merged report would be partial", file=sys.stderr)
        return 3
    data = merge(parts, run_id)
    write_run(data, root / run_id, root)
    codes = [certify_exit_code(code, d) for code, (_, d) in zip((cpu_code, gpu_code), parts)]
    return 1 if 1 in codes else max(codes)
