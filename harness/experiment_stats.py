"""The experiments' statistics: a paired effect with a hierarchical-bootstrap CI, its verdict, and its power.

An experiment compares two arms (e.g. the handbook's all-7 LoRA targets vs attention-only) trained on the same
seeds and scored on the same held-out items. Its effect is the difference in held-out exact match, treatment −
control, in points (percentage points: 100 × the difference in rates), paired on the items: every run of both
arms is scored on the same test items, so item difficulty cancels.

Its 95% CI comes from a hierarchical bootstrap over the two sources of noise, crossed: training seeds (resampled
with replacement; the same resampled seeds for both arms where the arms share their seeds) and held-out clusters
(an item's cluster is its held-out combination, or its function where the run record names no combination;
resampled with replacement, the same clusters for both arms). Resampling only 5 to 10 top-level units makes a
percentile interval too narrow (its variance is biased by (S−1)/S and it uses normal, not t, tails: simulated, a
plain percentile CI excluded 0 in ~15% of null experiments at 5 seeds), so the interval is Hesterberg's expanded
percentile interval: the percentiles at α'/2 and 1 − α'/2 with z(α'/2) = √(S/(S−1))·t(α/2, S−1), S the number of
seeds (T. Hesterberg, "What teachers should know about the bootstrap", The American Statistician 69(4), 2015).

The verdict (`decide`), with δ the minimum effect of interest fixed in the spec before running:
`pass` the effect is in the handbook's direction and the CI excludes 0; `refuted` the opposite direction and the CI
excludes 0; `unsupported` the CI lies inside ±δ (no effect worth having); otherwise `underpowered`: the design cannot
tell, and the remedy is more seeds or items, never a wider expectation.

Everything is vectorized with numpy and seeded: the same measurements give the same CI on every machine.
`simulate_verdicts` reruns a synthetic experiment of known effect many times and counts its verdicts (power and
stability of a design); tests/unit/test_experiment_stats.py holds the figures of the chosen design.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from html import escape
from statistics import NormalDist
from typing import Iterable, Mapping, Sequence

import numpy as np

Item = tuple[str, str, bool]  # (item id, cluster id, exact match)
LEVEL = 0.95
N_BOOT = 4000
BOOT_SEED = 20261127  # the bootstrap's own RNG seed: a rerun on the same measurements gives the same CI
CLUSTER_KEYS = ("combination", "template")  # evaluation v2's per-item combination id, by name; else the function


# --- Student's t, exactly, for integer degrees of freedom (no scipy in the suite's environment) ------------------

def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with integer `df` ≥ 1 (the closed-form series, exact to float rounding)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        inside = s * total  # P(|T| < |t|)
    else:
        total = 0.0
        if df > 1:
            term, total = 1.0, 1.0
            for k in range(1, (df - 1) // 2):
                term *= (2 * k) / (2 * k + 1) * c2
                total += term
            total *= s * math.cos(theta)
        inside = 2 / math.pi * (theta + total)
    return 0.5 + math.copysign(inside / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with integer `df` (bisection on `t_cdf`, to 1e-12)."""
    if not 0 < p < 1:
        raise ValueError(p)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def expanded_alpha(level: float, n_units: int) -> float:
    """Hesterberg's expanded percentile: the two-sided α' whose normal quantile is √(n/(n−1))·t(n−1) at `level`."""
    if n_units < 2:
        raise ValueError("a CI over training seeds needs at least 2 seeds per arm")
    z = math.sqrt(n_units / (n_units - 1)) * t_quantile(1 - (1 - level) / 2, n_units - 1)
    return 2 * NormalDist().cdf(-z)


# --- the paired effect --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedEffect:
    """Treatment − control held-out exact match, in points, with its hierarchical-bootstrap CI."""

    effect: float
    ci_low: float
    ci_high: float
    se: float  # the bootstrap's standard deviation of the effect, points
    level: float
    treatment_mean: float  # exact match, points
    control_mean: float
    treatment_seed_sd: float  # sample SD over seeds of one arm's exact match, points
    control_seed_sd: float
    n_seeds: int  # seeds per arm (the smaller arm)
    paired_seeds: bool  # both arms ran the same seeds: they are resampled together
    items: int
    clusters: int
    n_boot: int
    expanded_alpha: float  # the two-sided tail the percentiles were read at (see the module docstring)

    def evidence(self, digits: int = 2) -> dict:
        out = {k: (round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["expanded_alpha"] = round(self.expanded_alpha, 5)
        return out


def cluster_sums(runs: Mapping[object, Sequence[Item]], items: Sequence[str] | None = None
                 ) -> tuple[list, list[str], list[str], np.ndarray, np.ndarray]:
    """(seeds, item ids, cluster ids, Y[seed, cluster] = items right, n[cluster] = items) of one arm's runs.

    Every run must hold the same items (the ids of `items` where given), each with one cluster: an item missing from
    one run, or put in two clusters, would unpair the comparison silently, so it is an error."""
    seeds = list(runs)
    if not seeds:
        raise ValueError("an arm without runs")
    cluster_of: dict[str, str] = {}
    by_seed = []
    for seed in seeds:
        exact = {}
        for item_id, cluster, right in runs[seed]:
            item_id, cluster = str(item_id), str(cluster)
            if cluster_of.setdefault(item_id, cluster) != cluster:
                raise ValueError(f"item {item_id} is in cluster {cluster_of[item_id]!r} in one run and {cluster!r} in another")
            if item_id in exact:
                raise ValueError(f"item {item_id} scored twice in the run of seed {seed}")
            exact[item_id] = bool(right)
        by_seed.append(exact)
    ids = sorted(items if items is not None else by_seed[0])
    for seed, exact in zip(seeds, by_seed):
        if set(exact) != set(ids):
            missing, extra = sorted(set(ids) - set(exact)), sorted(set(exact) - set(ids))
            raise ValueError(f"the run of seed {seed} was not scored on the same held-out items as the others "
                             f"(missing {missing[:5]}{'…' if len(missing) > 5 else ''}, extra {extra[:5]}): "
                             "a paired comparison needs every run of both arms scored on the same items")
    clusters = sorted({cluster_of[i] for i in ids})
    col = {c: j for j, c in enumerate(clusters)}
    item_col = np.array([col[cluster_of[i]] for i in ids])
    n = np.bincount(item_col, minlength=len(clusters)).astype(float)
    y = np.zeros((len(seeds), len(clusters)))
    for s, exact in enumerate(by_seed):
        right = np.array([exact[i] for i in ids], dtype=float)
        y[s] = np.bincount(item_col, weights=right, minlength=len(clusters))
    return seeds, ids, [cluster_of[i] for i in ids], y, n


def bootstrap_weights(n_seeds_t: int, n_seeds_c: int, n_clusters: int, *, paired: bool, n_boot: int = N_BOOT,
                      rng_seed: int = BOOT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resampling counts: seeds of each arm (the same draw for both where paired) and clusters (shared)."""
    rng = np.random.default_rng(rng_seed)
    w_t = rng.multinomial(n_seeds_t, np.full(n_seeds_t, 1 / n_seeds_t), size=n_boot).astype(float)
    w_c = w_t if paired else rng.multinomial(n_seeds_c, np.full(n_seeds_c, 1 / n_seeds_c), size=n_boot).astype(float)
    v = rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=n_boot).astype(float)
    return w_t, w_c, v


def bootstrap_effects(y_t: np.ndarray, y_c: np.ndarray, n: np.ndarray, weights) -> np.ndarray:
    """The effect (points) of every bootstrap replicate: Σ_s w_s Σ_c v_c Y[s,c] / (S · Σ_c v_c n_c), per arm."""
    # einsum without BLAS: these products are small, and a multithreaded BLAS on a shared 2-core machine was
    # measured 10x slower than one thread
    w_t, w_c, v = weights
    items = np.einsum("bc,c->b", v, n)
    rate_t = np.einsum("bc,bc->b", np.einsum("bs,sc->bc", w_t, y_t), v) / (y_t.shape[0] * items)
    rate_c = np.einsum("bc,bc->b", np.einsum("bs,sc->bc", w_c, y_c), v) / (y_c.shape[0] * items)
    return 100 * (rate_t - rate_c)


def effect_from_sums(y_t: np.ndarray, y_c: np.ndarray, n: np.ndarray, *, paired: bool, level: float = LEVEL,
                     n_boot: int = N_BOOT, rng_seed: int = BOOT_SEED, weights=None, expand: bool = True) -> PairedEffect:
    """The paired effect from per-seed cluster sums (Y[seed, cluster] items right, n[cluster] items)."""
    s_t, s_c = y_t.shape[0], y_c.shape[0]
    if paired and s_t != s_c:
        raise ValueError("paired seeds need the same seeds in both arms")
    acc_t, acc_c = 100 * y_t.sum(1) / n.sum(), 100 * y_c.sum(1) / n.sum()
    weights = weights or bootstrap_weights(s_t, s_c, len(n), paired=paired, n_boot=n_boot, rng_seed=rng_seed)
    boot = bootstrap_effects(y_t, y_c, n, weights)
    alpha = expanded_alpha(level, min(s_t, s_c)) if expand else 1 - level
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    sd = lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else 0.0
    return PairedEffect(effect=float(acc_t.mean() - acc_c.mean()), ci_low=float(lo), ci_high=float(hi),
                        se=float(boot.std()), level=level, treatment_mean=float(acc_t.mean()),
                        control_mean=float(acc_c.mean()), treatment_seed_sd=sd(acc_t), control_seed_sd=sd(acc_c),
                        n_seeds=min(s_t, s_c), paired_seeds=paired, items=int(n.sum()), clusters=len(n),
                        n_boot=len(boot), expanded_alpha=alpha)


def paired_effect(treatment: Mapping[object, Sequence[Item]], control: Mapping[object, Sequence[Item]], *,
                  level: float = LEVEL, n_boot: int = N_BOOT, rng_seed: int = BOOT_SEED) -> PairedEffect:
    """Treatment − control held-out exact match (points) with a hierarchical-bootstrap CI.

    `treatment`/`control`: {training seed: [(item id, cluster id, exact), ...]}, one list per run. Every run of
    both arms must be scored on the same items. Where both arms ran the same seeds, a bootstrap replicate resamples
    the seeds once for both (seed s of one arm with seed s of the other); otherwise each arm's seeds separately."""
    seeds_t, ids, clusters_t, y_t, n = cluster_sums(treatment)
    seeds_c, ids_c, clusters_c, y_c, n_c = cluster_sums(control, items=ids)
    if clusters_t != clusters_c:
        raise ValueError("the two arms put the same items in different clusters")
    paired = sorted(map(str, seeds_t)) == sorted(map(str, seeds_c))
    if paired:  # the same seed order in both arms
        order = {str(s): i for i, s in enumerate(seeds_c)}
        y_c = y_c[[order[str(s)] for s in seeds_t]]
    return effect_from_sums(y_t, y_c, n, paired=paired, level=level, n_boot=n_boot, rng_seed=rng_seed)


def decide(effect: PairedEffect, direction: int, delta: float) -> str:
    """pass / refuted (CI excludes 0, in / against the handbook's `direction` ±1), unsupported (CI inside ±delta),
    else underpowered."""
    if direction not in (1, -1):
        raise ValueError(direction)
    if effect.ci_low > 0 or effect.ci_high < 0:
        return "pass" if (effect.ci_low > 0) == (direction > 0) else "refuted"
    if -delta < effect.ci_low and effect.ci_high < delta:
        return "unsupported"
    return "underpowered"


def seeds_needed(effect: PairedEffect, delta: float, most: int = 200) -> int | None:
    """About how many seeds per arm would decide (CI excluding 0, or inside ±delta) if the effect and the spread per
    seed stayed as measured: the SE scales as 1/√seeds (the seed-level noise dominates; more items shrink the rest).
    None where even `most` would not (an effect near ±delta)."""
    if effect.se <= 0:
        return effect.n_seeds
    unit_se = effect.se * math.sqrt(effect.n_seeds)
    for s in range(max(2, effect.n_seeds), most + 1):
        z = math.sqrt(s / (s - 1)) * t_quantile(1 - (1 - effect.level) / 2, s - 1)
        half = z * unit_se / math.sqrt(s)
        if abs(effect.effect) > half or abs(effect.effect) + half < delta:
            return s
    return None


# --- from run records ---------------------------------------------------------------------------------------------

def outcomes_from_record(record: dict, cluster_key: str | None = None) -> tuple[list[Item], str]:
    """(items, the key their clusters came from) of one run record's held-out evaluation (`eval.outcomes`: per-prompt
    {id, function, exact}). The cluster is the item's held-out combination (`cluster_key`, else the first of
    CLUSTER_KEYS the items carry: evaluation v2) or, in records without one, its function."""
    outcomes = (record.get("eval") or {}).get("outcomes")
    if not outcomes:
        raise ValueError("the run record has no per-prompt eval outcomes (eval.outcomes): re-run it with this harness")
    keys = [cluster_key] if cluster_key else [k for k in CLUSTER_KEYS if all(o.get(k) is not None for o in outcomes)][:1]
    key = keys[0] if keys else "function"
    return [(str(o["id"]), str(o[key]), bool(o["exact"])) for o in outcomes], key


# --- power and stability of a design, by simulation ---------------------------------------------------------------

def simulate_cluster_sums(effect: float, *, n_sims: int, n_seeds: int = 5, n_items: int = 2000, n_clusters: int = 200,
                          seed_sd: float = 3.0, seed_cluster_sd: float = 10.0, effect_cluster_sd: float = 5.0,
                          seed_function_sd: float = 0.0, n_functions: int = 13, base: float = 0.55,
                          base_sd: float = 0.2, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic experiments of known effect (points): (Y_t, Y_c of shape (sims, seeds, clusters), n[cluster]).

    Each simulated experiment draws its own test set and training noise. Cluster c of arm a, seed s is right with
    probability base_c + [a = treatment]·(effect + g_c) + u_{a,s} + f_{a,s,F(c)} + h_{a,s,c}, clipped to [0, 1]:
    base_c ~ N(base, base_sd) the combination's difficulty, g_c ~ N(0, effect_cluster_sd) how the effect varies over
    combinations, u ~ N(0, seed_sd) a run's overall level (seed to seed), f ~ N(0, seed_function_sd) what one run
    learns of one function (cluster c belongs to function c mod n_functions: dataset v1's reruns moved single
    functions by tens of points), h ~ N(0, seed_cluster_sd) what one run learns of one combination; items are
    Bernoulli. All SDs in points."""
    rng = np.random.default_rng(rng_seed)
    m = n_items // n_clusters
    shape = (n_sims, 1, n_clusters)
    base_c = np.clip(rng.normal(base, base_sd, shape), 0.02, 0.98)
    gain = (effect + rng.normal(0, effect_cluster_sd, shape)) / 100
    function_of = np.arange(n_clusters) % n_functions

    def arm(extra):
        u = rng.normal(0, seed_sd / 100, (n_sims, n_seeds, 1))
        f = rng.normal(0, seed_function_sd / 100, (n_sims, n_seeds, n_functions))[:, :, function_of]
        h = rng.normal(0, seed_cluster_sd / 100, (n_sims, n_seeds, n_clusters))
        return rng.binomial(m, np.clip(base_c + extra + u + f + h, 0, 1)).astype(float)

    return arm(gain), arm(0.0), np.full(n_clusters, float(m))


def simulate_verdicts(effect: float, *, direction: int = 1, delta: float = 3.0, n_sims: int = 200, n_boot: int = 1000,
                      expand: bool = True, rng_seed: int = 0, **design) -> dict:
    """Rerun a synthetic experiment of known `effect` (points) `n_sims` times: how often each verdict comes out, how
    often the CI covers the true effect, and the seed-to-seed SD of an arm's exact match the design produced."""
    y_t, y_c, n = simulate_cluster_sums(effect, n_sims=n_sims, rng_seed=rng_seed, **design)
    weights = bootstrap_weights(y_t.shape[1], y_c.shape[1], len(n), paired=True, n_boot=n_boot, rng_seed=rng_seed + 1)
    verdicts, covered = Counter(), 0
    for k in range(n_sims):
        e = effect_from_sums(y_t[k], y_c[k], n, paired=True, weights=weights, expand=expand)
        verdicts[decide(e, direction, delta)] += 1
        covered += e.ci_low <= effect <= e.ci_high
    seed_sd = float(np.mean(np.std(100 * y_c.sum(2) / n.sum(), axis=1, ddof=1)))
    return {"verdicts": {k: v / n_sims for k, v in verdicts.most_common()}, "coverage": covered / n_sims,
            "arm_seed_sd": round(seed_sd, 2), "n_sims": n_sims}


# --- the report's forest plot -------------------------------------------------------------------------------------

def forest_rows(results: dict, context: str = "gpu") -> list[dict]:
    """One row per experiment claim in a results.json (`claims[].evidence[context]` holding effect_points and its
    CI): {id, label, effect, ci_low, ci_high, delta, verdict, expected}."""
    rows = []
    for claim in results.get("claims", []):
        ev = (claim.get("evidence") or {}).get(context) or {}
        if not isinstance(ev, dict) or ev.get("effect_points") is None or ev.get("ci_low_points") is None:
            continue
        rows.append({"id": claim["id"], "label": ev.get("comparison", ""), "effect": ev["effect_points"],
                     "ci_low": ev["ci_low_points"], "ci_high": ev["ci_high_points"], "delta": ev.get("delta_points"),
                     "verdict": claim.get("verdict"), "expected": claim.get("expected")})
    return rows


VERDICT_COLORS = {"pass": "#2ca02c", "refuted": "#d62728", "corrected": "#ff7f0e", "unsupported": "#7f7f7f",
                  "fail": "#000000"}


def forest_plot_svg(rows: Iterable[dict], title: str = "Experiments: effect on held-out exact match (points, 95% CI)",
                    width: int = 640) -> str:
    """An inline SVG forest plot: one row per experiment, its effect (treatment − control, points) as a dot, its CI as
    a line, the ±δ band of no effect worth having shaded, 0 dashed. rows: {id, label, effect, ci_low, ci_high, delta,
    verdict}. Empty string for no rows."""
    rows = list(rows)
    if not rows:
        return ""
    row_h, top, left, right = 34, 34, 210, 120
    height = top + row_h * len(rows) + 44
    deltas = [abs(r["delta"]) for r in rows if r.get("delta") is not None]
    span = max([abs(r["ci_low"]) for r in rows] + [abs(r["ci_high"]) for r in rows] + deltas + [1.0]) * 1.1
    x = lambda v: left + (v + span) / (2 * span) * (width - left - right)
    body = []
    delta = max(deltas) if deltas else None
    if delta:
        body.append(f'<rect x="{x(-delta):.1f}" y="{top - 6}" width="{x(delta) - x(-delta):.1f}" '
                    f'height="{row_h * len(rows) + 6}" fill="#eeeeee"><title>±δ = {delta:g} points: no effect worth '
                    f'having</title></rect>')
    body.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 6}" y2="{top + row_h * len(rows)}" stroke="#555" '
                f'stroke-dasharray="4 3"/>')
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h / 2
        color = VERDICT_COLORS.get(r.get("verdict"), "#1f77b4")
        tip = (f"{r['id']}: effect {r['effect']:+.1f} points, 95% CI [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}], "
               f"verdict {r.get('verdict')} (recorded {r.get('expected')})")
        body.append(f'<text x="6" y="{y - 2:.1f}" font-size="11" font-weight="bold">{escape(r["id"])}</text>'
                    f'<text x="6" y="{y + 11:.1f}" font-size="9">{escape(str(r.get("label") or ""))}</text>'
                    f'<g><title>{escape(tip)}</title>'
                    f'<line x1="{x(r["ci_low"]):.1f}" x2="{x(r["ci_high"]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{color}" stroke-width="2"/>'
                    f'<circle cx="{x(r["effect"]):.1f}" cy="{y:.1f}" r="4.5" fill="{color}"/></g>'
                    f'<text x="{width - right + 6}" y="{y + 4:.1f}" font-size="10">{r["effect"]:+.1f} '
                    f'{escape(str(r.get("verdict") or ""))}</text>')
    axis_y = top + row_h * len(rows) + 14
    for v in (-round(span / 1.1), 0, round(span / 1.1)):
        body.append(f'<text x="{x(v):.1f}" y="{axis_y}" font-size="10" text-anchor="middle">{v:+d}</text>'
                    if v else f'<text x="{x(0):.1f}" y="{axis_y}" font-size="10" text-anchor="middle">0</text>')
    body.append(f'<text x="{x(0):.1f}" y="{axis_y + 14}" font-size="9" text-anchor="middle">points (treatment − '
                f'control); shaded: ±δ, no effect worth having</text>')
    return (f'<svg class="plot forest" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            f'<text x="6" y="16" font-size="12">{escape(title)}</text>{"".join(body)}</svg>')
