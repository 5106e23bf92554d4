"""Evaluation v2's scores (issue #16): pure functions over model outputs and expected calls; numpy, no torch.

`score` turns one output per held-out item into the eval dict that run records carry (`harness.evaluate`
adds generation, the samples and the stored outputs). Why each figure is there:

- exact match, the headline: the parsed JSON object equals the expected one (unchanged from v1, so the
  per-prompt outcomes stay comparable with recorded baselines, harness.output_baseline).
- AST match (harness.arabic_norm): BFCL's rule with Arabic normalization, so that exact match minus AST match
  is the share lost to spelling variants (hamza, ى/ي, digits, "7:30" for "07:30") rather than to wrong values.
- per-slot counts (correct / wrong / missing per expected argument, extra keys apart): which argument fails,
  e.g. a currency pair swapped or a name cut short after an unseen word, which one exact match cannot say.
- action accuracy, JSON validity, invented keys and invented functions: the ways a small model leaves the
  declared interface (a made-up argument or function name is a different failure from a wrong value).
- tables per function, per dialect and per function × dialect: where the failures are.
- the 2×2 of seen/unseen phrasing template × seen/unseen values: whether held-out phrasing or held-out values
  limit generalization (v2 examples carry `template_seen`/`values_seen`; v1 ones do not, and it is skipped).
- 95% confidence intervals from a bootstrap over clusters: items that share a held-out combination (template)
  succeed or fail together, so an item-level interval would be far too narrow (v1's 320 items behaved like ~14
  clusters, issue #16). The cluster is the item's combination id; resampling clusters keeps that correlation.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

from harness.arabic_norm import ast_match, values_match

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
SEEN = ("seen", "unseen")


def declared_functions() -> dict[str, set[str]]:
    """The declared functions' argument names (harness.dataset.FUNCTIONS), the reference for invented keys."""
    from harness.dataset import FUNCTIONS

    return {name: {slot.name for slot in slots} for name, slots in FUNCTIONS.items()}


def parse_call(text: str) -> dict | None:
    """A model answer as a JSON object, or None: harness.dataset.parse_call's rule, repeated here so that scoring
    does not import the dataset generator (and its templates) to score stored outputs."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Outcome:
    """One item's scores. slots: expected key -> correct | wrong | missing; exact_slots: keys equal unnormalized;
    extra: output keys the expected call lacks; invented_keys: "action.key" for keys the output's function lacks."""

    valid: bool
    has_action: bool
    action_correct: bool
    exact: bool
    ast: bool
    slots: dict[str, str]
    exact_slots: set[str]
    extra: list[str]
    invented_keys: list[str]
    keys_judged: int  # output argument keys judged for invention (those of a declared function or "none")
    invented_function: str | None


def judge(output: str, expected: str, declared: dict[str, set[str]]) -> Outcome:
    """Score one output against its expected call (a JSON string). An invalid output has every slot missing.

    Invented keys are judged against the output's own action when that action is declared (or "none", which
    has no arguments); an output naming an undeclared function counts once, as an invented function."""
    got, want = parse_call(output), json.loads(expected)
    slots: dict[str, str] = {}
    exact_slots: set[str] = set()
    for key, value in want.items():
        if key == "action":
            continue
        if got is None or key not in got:
            slots[key] = "missing"
        elif values_match(got[key], value):
            slots[key] = "correct"
            if type(got[key]) is type(value) and got[key] == value:
                exact_slots.add(key)
        else:
            slots[key] = "wrong"
    extra, invented, judged, invented_function = [], [], 0, None
    if got is not None:
        extra = [k for k in got if k != "action" and k not in want]
        action = got.get("action")
        if isinstance(action, str) and (action in declared or action == "none"):
            keys = [k for k in got if k != "action"]
            judged = len(keys)
            invented = [f"{action}.{k}" for k in keys if k not in declared.get(action, ())]
        elif "action" in got:
            invented_function = action if isinstance(action, str) else json.dumps(action, ensure_ascii=False)
    return Outcome(valid=got is not None, has_action=got is not None and "action" in got,
                   action_correct=got is not None and got.get("action") == want["action"], exact=got == want,
                   ast=ast_match(got, want), slots=slots, exact_slots=exact_slots, extra=extra,
                   invented_keys=invented, keys_judged=judged, invented_function=invented_function)


def cluster_bootstrap(values, clusters, resamples: int = RESAMPLES, seed: int | str = SEED,
                      level: float = LEVEL) -> list[tuple[float, float]] | None:
    """Percentile CIs of the mean of each column of `values` (n items × k metrics, or n) under resampling of
    whole clusters with replacement; None with fewer than two clusters. Deterministic for a seed.

    Each resample draws C cluster indices (C = number of clusters); its estimate is the ratio
    Σ cluster sums / Σ cluster sizes over the drawn clusters, as a matrix product of the (resamples × C) draw
    counts with the per-cluster sums, so 2,000 resamples of a few hundred clusters take milliseconds."""
    vals = np.asarray(values, dtype=float)
    if vals.ndim == 1:
        vals = vals[:, None]
    if len(vals) == 0:
        return None
    _, inverse = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    n_clusters = int(inverse.max()) + 1
    if n_clusters < 2:  # one cluster: every resample is the sample itself, a zero-width interval that says nothing
        return None
    sums = np.zeros((n_clusters, vals.shape[1]))
    np.add.at(sums, inverse, vals)
    sizes = np.bincount(inverse, minlength=n_clusters).astype(float)
    seed_seq = [zlib.crc32(str(seed).encode())] if isinstance(seed, str) else [seed]
    rng = np.random.default_rng(seed_seq)
    draws = rng.integers(0, n_clusters, size=(resamples, n_clusters))
    draws += (np.arange(resamples) * n_clusters)[:, None]
    counts = np.bincount(draws.ravel(), minlength=resamples * n_clusters).reshape(resamples, n_clusters)
    estimates = (counts @ sums) / (counts @ sizes)[:, None]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(estimates, [tail, 100 - tail], axis=0)
    return [(round(float(a), 6), round(float(b), 6)) for a, b in zip(lo, hi)]


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def _table_row(outs: list[Outcome]) -> dict:
    n, exact, ast = len(outs), sum(o.exact for o in outs), sum(o.ast for o in outs)
    return {"n": n, "exact": exact, "ast": ast, "exact_match": _rate(exact, n), "ast_match": _rate(ast, n)}


def score(outputs: list[str], expected: list[str], functions: list[str], *, dialects: list[str] | None = None,
          clusters: list[str] | None = None, template_seen: list[bool | None] | None = None,
          values_seen: list[bool | None] | None = None, declared: dict[str, set[str]] | None = None,
          resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """The eval dict of outputs[i] against expected[i] (JSON), item i asking for functions[i].

    dialects: per item (tables per dialect; "?" when absent); clusters: per item, the unit of the bootstrap
    (absent: every item its own cluster, a plain bootstrap); template_seen / values_seen: per item, for the 2×2
    diagnostic (absent or with a None: the diagnostic is None); declared: function -> argument names (default
    harness.dataset.FUNCTIONS). Rates are over all items unless named otherwise."""
    n_items = len(outputs)
    declared = declared_functions() if declared is None else declared
    dialects = dialects or ["?"] * n_items
    clusters = clusters or [str(i) for i in range(n_items)]
    outs = [judge(o, e, declared) for o, e in zip(outputs, expected)]
    n = max(1, n_items)

    ci_cols = np.array([[o.exact, o.ast] for o in outs], dtype=float).reshape(-1, 2)
    overall_ci = cluster_bootstrap(ci_cols, clusters, resamples, seed) or [None, None]

    per_function: dict[str, dict] = {}
    for fn in sorted(set(functions)):
        idx = [i for i, f in enumerate(functions) if f == fn]
        fouts = [outs[i] for i in idx]
        row = {**_table_row(fouts), "valid": sum(o.valid for o in fouts),
               "clusters": len({clusters[i] for i in idx})}
        ci = cluster_bootstrap(ci_cols[idx, :1], [clusters[i] for i in idx], resamples, f"{seed}/{fn}")
        row["exact_match_ci95"] = list(ci[0]) if ci else None
        per_function[fn] = row
    per_dialect = {d: _table_row([o for o, dd in zip(outs, dialects) if dd == d]) for d in sorted(set(dialects))}
    per_function_dialect = {
        fn: {d: _table_row(cell) for d in sorted(set(dialects))
             if (cell := [o for o, f, dd in zip(outs, functions, dialects) if f == fn and dd == d])}
        for fn in sorted(set(functions))}

    per_slot: dict[str, dict] = {}
    extra_keys: dict[str, int] = {}
    for o, fn in zip(outs, functions):
        for key, status in o.slots.items():
            row = per_slot.setdefault(f"{fn}.{key}", {"n": 0, "correct": 0, "exact": 0, "wrong": 0, "missing": 0})
            row["n"] += 1
            row[status] += 1
            row["exact"] += key in o.exact_slots
        for key in o.extra:
            extra_keys[f"{fn}.{key}"] = extra_keys.get(f"{fn}.{key}", 0) + 1
    totals = {k: sum(r[k] for r in per_slot.values()) for k in ("n", "correct", "exact", "wrong", "missing")}
    slots = {**totals, "extra": sum(extra_keys.values()), "accuracy": _rate(totals["correct"], totals["n"])}
    per_slot = {k: {**r, "accuracy": r["correct"] / r["n"]} for k, r in sorted(per_slot.items())}

    invented_keys: dict[str, int] = {}
    invented_functions: dict[str, int] = {}
    for o in outs:
        for key in o.invented_keys:
            invented_keys[key] = invented_keys.get(key, 0) + 1
        if o.invented_function is not None:
            invented_functions[o.invented_function] = invented_functions.get(o.invented_function, 0) + 1
    keys_judged = sum(o.keys_judged for o in outs)

    return {
        "prompts": n_items,
        "json_valid_rate": sum(o.valid for o in outs) / n,
        "action_rate": sum(o.has_action for o in outs) / n,
        "action_accuracy": sum(o.action_correct for o in outs) / n,
        "exact_match": sum(o.exact for o in outs) / n,
        "exact_match_ci95": list(overall_ci[0]) if overall_ci[0] else None,
        "ast_match": sum(o.ast for o in outs) / n,
        "ast_match_ci95": list(overall_ci[1]) if overall_ci[1] else None,
        "ci": {"method": "percentile bootstrap over clusters (held-out combination ids), resampled with replacement",
               "level": LEVEL, "resamples": resamples, "seed": seed, "clusters": len(set(clusters))},
        "per_function": per_function,
        "per_dialect": per_dialect,
        "per_function_dialect": per_function_dialect,
        "slots": slots,
        "per_slot": per_slot,
        "extra_keys": dict(sorted(extra_keys.items())),
        # Of the argument keys in outputs that call a declared function (or "none"): share the function lacks.
        "invented_key_rate": _rate(sum(len(o.invented_keys) for o in outs), keys_judged) or 0.0,
        "invented_keys": dict(sorted(invented_keys.items())),
        # Of all items: outputs whose action is neither a declared function nor "none".
        "invented_function_rate": sum(o.invented_function is not None for o in outs) / n,
        "invented_functions": dict(sorted(invented_functions.items())),
        "seen_unseen": seen_unseen(outs, template_seen, values_seen),
    }


def seen_unseen(outs: list[Outcome], template_seen, values_seen) -> dict | None:
    """Exact and AST match in the 2×2 of seen/unseen template × seen/unseen values; None when not known per item."""
    if not template_seen or not values_seen or any(v is None for v in (*template_seen, *values_seen)):
        return None
    table: dict = {}
    for t in SEEN:
        for v in SEEN:
            cell = [o for o, ts, vs in zip(outs, template_seen, values_seen)
                    if (ts is True) == (t == "seen") and (vs is True) == (v == "seen")]
            table.setdefault(f"template_{t}", {})[f"values_{v}"] = _table_row(cell)
    return table
