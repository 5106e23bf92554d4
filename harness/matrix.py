"""`python -m harness matrix LEG...`: claims × version legs on one page, and what each upgrade step moved.

A user runs this suite before upgrading unsloth, trl or transformers; one leg (a tox env, README "Release
matrix") is one set of versions. This page puts the legs side by side so that an upgrade step reads as either
"safe for what the suite covers" or the claims whose verdict or evidence changed, with old → new figures.

Each LEG argument is a leg's report folder (`reports/<leg>`, or a CI artifact of it), a run folder, or a
results.json. A leg that could not be installed has no results.json: it is a column marked so, never dropped.
`leg.json` in the leg's folder ({"leg", "pins", "install_error", "tests"}; written by `python -m harness.matrix
record-leg`) names the leg, says why it could not be installed, and, read from the leg's log, the suite's summary
line and its failing tests: results.json records claims only, and a leg whose other tests fail (a probe, a unit test
of the pipeline) must not read "safe" without saying so.

Stdlib only (the CI job that builds the page installs no suite, only the CLI's tqdm), and deterministic: the
same inputs give the same bytes (no timestamps, no paths of this machine).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from html import escape
from pathlib import Path

SCHEMA = 1
LEG_FILE = "leg.json"
NOT_INSTALLED = "could not be installed"
SAFE = "safe for what the suite covers"
REL_TOLERANCE = 1e-6  # as `harness diff`: CPU legs are deterministic (scripts/repeatability.sh)
# Column order (unless --keep-order): these packages' versions, compared in this order; an absent one sorts first, so
# CPU legs (no unsloth) come before GPU legs. Each is pinned in every constraints/<leg>.txt that a leg which did not
# install is ordered by (unsloth_zoo is not: tox installs it apart).
ORDER_PACKAGES = ("unsloth", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers",
                  "torch")
ABSENT = object()  # an evidence figure one leg has and the other does not
NOT_REACHED = "not reached"
# Figures that differ between two GPU runs of one commit at the same versions, so between GPU legs they are noise, not a
# release's doing (measured: reports/examples/h200-2026-11-26-certify vs h200-2026-11-26-tier, commit 4659129, unsloth
# 2026.10.9, one H200: apart from the experiments' own seeds, only the grid's step_seconds, the export's seconds and
# the held-out scores of CHECK-OUTPUT moved; every peak-memory figure of GC-VRAM is bit-identical across all 8 stored
# GPU runs at 2026.10.9, on H100 and H200). Their claims' verdicts and regressions are still compared: the claims judge
# them with their own statistics (paired baseline, seeds). GGUF-HELDOUT pairs the GGUF with those same held-out answers.
GPU_NOISE_KEYS = re.compile(r"(^|[._])(seconds|step_time|tokens_per_second|runtime)$|(^|\.)phases(\.|$)")
GPU_NOISE_CLAIMS = frozenset({"CHECK-OUTPUT", "GGUF-HELDOUT", "LORA-MLP-ABLATION", "LR-WARMUP-STABILITY", "MASK-STABILITY"})


# --- loading legs -------------------------------------------------------------------------------------------


def _results(path: Path) -> dict | None:
    """results.json at path, path/results.json, path/latest/results.json, else the newest run folder's (a CI
    artifact may have lost the `latest` symlink); None where there is none."""
    candidates = [path, path / "results.json", path / "latest" / "results.json"]
    if path.is_dir():
        candidates += sorted(path.glob("*/results.json"), reverse=True)  # run ids start with a UTC timestamp
    for candidate in candidates:
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except ValueError:
                return None
    return None


def _folder_name(path: Path) -> str:
    """The fallback leg name: the folder's (`latest` → its parent's), or a results file's own ("control-results.json")."""
    if path.suffix == ".json" and path.stem != "results":
        return path.stem.removesuffix("-results")
    folder = path.parent if path.suffix == ".json" else path
    return folder.parent.name if folder.name == "latest" else folder.name


def load_leg(path: str | Path) -> dict:
    """One column: name, versions, hardware, and either the results or why the leg could not be installed."""
    path = Path(path)
    folder = path.parent if path.suffix == ".json" else path
    record = {}
    for candidate in (folder / LEG_FILE, folder.parent / LEG_FILE):
        if candidate.is_file():
            record = json.loads(candidate.read_text())
            break
    data = None if record.get("install_error") else _results(path)
    env = (data or {}).get("environment") or {}
    name = record.get("leg") or env.get("leg") or _folder_name(path)
    leg = {"name": name, "installed": data is not None, "pins": record.get("pins") or {},
           "versions": env.get("packages") or record.get("pins") or {}, "tests": record.get("tests")}
    if data is None:
        leg["install_error"] = record.get("install_error") or f"no results.json in {_folder_name(path)}"
        leg["hardware"] = None
        return leg
    gpu = env.get("gpu")
    leg.update(hardware=gpu.get("name", "gpu") if isinstance(gpu, dict) else "cpu", run=data.get("run"),
               complete=bool(data.get("complete")), git_commit=env.get("git_commit"), git_dirty=env.get("git_dirty"),
               source_digest=env.get("source_digest"), claims=data.get("claims") or [])
    return leg


def _version_key(version: str | None) -> tuple[int, ...]:
    """Numeric parts of a version ("2.13.0+cpu" → (2, 13, 0)); enough to order releases of one package."""
    return tuple(int(n) for n in re.findall(r"\d+", (version or "").split("+")[0]))


def order_legs(legs: list[dict]) -> list[dict]:
    """By the versions of ORDER_PACKAGES; a leg with no known versions last (stable: ties keep the order given)."""
    return sorted(legs, key=lambda leg: (not leg["versions"],
                                         tuple(_version_key(leg["versions"].get(p)) for p in ORDER_PACKAGES)))


# --- comparing two legs -------------------------------------------------------------------------------------


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Evidence as leaf path → value. Dicts and lists of containers are walked; a list of plain values is one leaf
    (shown whole, old → new)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_path(value) -> bool:
    return isinstance(value, str) and value.startswith("/") and "\n" not in value


def same(a, b, rtol: float = REL_TOLERANCE) -> bool:
    """Numbers within a relative tolerance (lists of numbers element by element); two absolute paths always (where a
    run wrote its files is the machine's, not the library's: the stored control and canary runs of
    reports/examples/legs-2026-11-26 differ only in such a path); anything else exactly equal."""
    if _is_path(a) and _is_path(b):
        return True
    if _is_number(a) and _is_number(b):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(same(x, y, rtol) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def claim_changes(old: dict | None, new: dict | None, rtol: float, noise=None) -> dict | None:
    """What moved for one claim between two legs: its verdict, whether it fails its recorded expectation (`regression`:
    a claim can stay "corrected" while its figures leave their bounds), and the evidence figures beyond rtol; None if
    nothing. `noise(key)` marks figures known to move between runs at the same versions: listed apart, never a change."""
    old_verdict, new_verdict = (old or {}).get("verdict"), (new or {}).get("verdict")
    old_reg, new_reg = bool((old or {}).get("regression")), bool((new or {}).get("regression"))
    a, b = flatten((old or {}).get("evidence") or {}), flatten((new or {}).get("evidence") or {})
    moved, noisy = [], []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, ABSENT), b.get(key, ABSENT)
        if x is ABSENT or y is ABSENT or not same(x, y, rtol):
            item = {"key": key, **({} if x is ABSENT else {"old": x}), **({} if y is ABSENT else {"new": y})}
            (noisy if noise and x is not ABSENT and y is not ABSENT and noise(key) else moved).append(item)
    if old_verdict == new_verdict and old_reg == new_reg and not moved:
        return {"noise": noisy} if noisy else None
    out = {"verdict": [old_verdict, new_verdict] if old_verdict != new_verdict else None, "evidence": moved}
    if old_reg != new_reg:
        out["regression"] = [old_reg, new_reg]
    if noisy:
        out["noise"] = noisy
    return out


def _measured(claim: dict | None) -> bool:
    return bool(claim) and (claim.get("verdict") not in (None, "skip") or bool(claim.get("evidence")))


def not_reached(leg: dict, claim: dict | None) -> bool:
    """A claim an interrupted run never got to: the run is incomplete and the claim has neither a verdict beyond skip nor
    evidence. Comparing it would read "skip → pass" as a change the release made."""
    return (not leg.get("complete") and claim is not None and claim.get("verdict") in (None, "skip")
            and not claim.get("evidence"))


def unreached(found: list[tuple[dict, dict | None]]) -> list[str]:
    """The legs (of (leg, its record of one claim) pairs) whose interrupted run never reached the claim, where another
    leg measured it; none where no leg did (nothing to compare)."""
    if not any(_measured(claim) for _, claim in found):
        return []
    return [leg["name"] for leg, claim in found if not_reached(leg, claim)]


def _noise_rule(cid: str, gpu: bool):
    """Which figures of a claim move between runs at the same versions (GPU_NOISE_*): None between CPU legs."""
    if not gpu:
        return None
    return (lambda key: True) if cid in GPU_NOISE_CLAIMS else (lambda key: bool(GPU_NOISE_KEYS.search(key)))


def suite_code(leg: dict) -> str | None:
    """Which suite code a leg ran: the digest of its source files where recorded (harness.results.source_digest), else
    its commit. A commit alone is not enough: a leg run from a tree with uncommitted edits recorded the commit it sat
    on (seen: the "newest" leg of reports/examples/legs-2026-11-28-cpu-release-matrix recorded d7cdb03 and ran the
    next commit's dataset, so the page showed a change no release made)."""
    return leg.get("source_digest") or leg.get("git_commit")


def _suite_name(old: dict, new: dict) -> str:
    """"code A → B" (two digests), "commit A → B" (neither), else each side by what it has."""
    if old.get("source_digest") and new.get("source_digest"):
        return f"code {old['source_digest']} → {new['source_digest']}"
    if not old.get("source_digest") and not new.get("source_digest"):
        return f"commit {old.get('git_commit')} → {new.get('git_commit')}"
    def side(leg: dict) -> str:
        return f"code {leg['source_digest']}" if leg.get("source_digest") else f"commit {leg.get('git_commit')}"

    return f"{side(old)} → {side(new)}"


def step(old: dict, new: dict, rtol: float) -> dict:
    """One upgrade step: the versions that changed, and either SAFE or the claims whose verdict or evidence moved."""
    versions = {p: [old["versions"].get(p), new["versions"].get(p)]
                for p in sorted(set(old["versions"]) | set(new["versions"]))
                if old["versions"].get(p) != new["versions"].get(p)}
    out = {"from": old["name"], "to": new["name"], "versions": versions, "changed": {}}
    if old["hardware"] != new["hardware"] and "cpu" in (old["hardware"], new["hardware"]):
        # A CPU leg and a GPU leg run different tiers: their differences are coverage, not behaviour.
        out.update(status="not comparable", line=f"not comparable: {old['hardware']} leg → {new['hardware']} leg "
                                                 "(different tiers)")
        return out
    if suite_code(old) != suite_code(new):
        # Other suite code measures differently (a new dataset moves every count): not the release's doing.
        out.update(status="not comparable", line=f"not comparable: suite {_suite_name(old, new)} "
                                                 "(rerun both legs on one commit)")
        return out
    a, b = ({c["id"]: c for c in leg["claims"]} for leg in (old, new))
    gpu = "cpu" not in (old["hardware"], new["hardware"])
    not_compared = {}
    for cid in _claim_ids([old, new]):
        if any(not_reached(leg, claims.get(cid)) for leg, claims in ((old, a), (new, b))):
            missing = unreached([(old, a.get(cid)), (new, b.get(cid))])
            if missing:
                not_compared[cid] = missing
            continue
        change = claim_changes(a.get(cid), b.get(cid), rtol, _noise_rule(cid, gpu))
        if change and set(change) == {"noise"}:
            out.setdefault("noise", {})[cid] = change["noise"]
        elif change:
            out["changed"][cid] = change
    if not_compared:
        out["not_reached"] = not_compared
    tests = test_changes(old.get("tests"), new.get("tests"))
    if tests:
        out["tests"] = tests
    failing = (tests or {}).get("newly_failing") or []
    extra = [f"{len(failing)} test{'s' if len(failing) != 1 else ''} newly failing"] if failing else []
    if not_compared:
        incomplete = sorted({name for names in not_compared.values() for name in names})
        extra.append(f"{len(not_compared)} claim{'s' if len(not_compared) != 1 else ''} not compared: not reached in "
                     f"{', '.join(incomplete)} (incomplete run)")
    if out["changed"]:
        out.update(status="changed", line="changed: " + ", ".join(out["changed"]) + "".join(f"; {e}" for e in extra))
    elif failing:
        out.update(status="tests failed", line="no claim moved, but " + "; ".join(extra))
    elif not_compared:
        out.update(status="incomplete", line="no claim moved among those both legs reached; " + extra[-1])
    else:
        out.update(status="safe", line=SAFE)
    return out


def test_changes(old: dict | None, new: dict | None) -> dict | None:
    """The tests that fail in `new` and not in `old` and the other way round; None when either leg's log gave no
    test summary (unknown is not "no failures") or nothing differs."""
    if not old or not new or old.get("summary") is None or new.get("summary") is None:
        return None
    a, b = set(old.get("failed") or []), set(new.get("failed") or [])
    if a == b:
        return None
    return {"newly_failing": sorted(b - a), "no_longer_failing": sorted(a - b)}


def _claim_ids(legs: list[dict]) -> list[str]:
    """Every claim of any leg, in the catalog order the legs list them (first seen first)."""
    ids: dict[str, None] = {}
    for leg in legs:
        for claim in leg.get("claims") or []:
            ids.setdefault(claim["id"], None)
    return list(ids)


def build(paths: list[str | Path], keep_order: bool = False, rtol: float = REL_TOLERANCE) -> dict:
    """The matrix as JSON-able data: legs (columns), claims (rows: a verdict per leg), and one step per leg after
    the first installed one, each compared with the nearest installed leg before it that ran the same suite code on
    the same hardware (else the nearest installed one: "not comparable")."""
    legs = [load_leg(p) for p in paths]
    seen: dict[str, int] = {}
    for leg in legs:  # two folders of one name (e.g. two `latest`s) stay two columns
        seen[leg["name"]] = seen.get(leg["name"], 0) + 1
        if seen[leg["name"]] > 1:
            leg["name"] += f" #{seen[leg['name']]}"
    if not keep_order:
        legs = order_legs(legs)
    steps, before = [], []
    for leg in legs:
        previous = before[-1] if before else None
        if not leg["installed"]:
            steps.append({"from": previous and previous["name"], "to": leg["name"], "versions": {}, "changed": {},
                          "status": "not installed", "line": f"{leg['name']} {NOT_INSTALLED}"})
            continue
        # the nearest installed leg before it that ran the same suite code on the same hardware, else the nearest
        previous = next((b for b in reversed(before) if (suite_code(b), b["hardware"]) ==
                         (suite_code(leg), leg["hardware"])), previous)
        if previous is not None:
            steps.append(step(previous, leg, rtol))
        before.append(leg)
    rows = []
    for cid in _claim_ids(legs):
        first = next(c for leg in legs for c in leg.get("claims") or [] if c["id"] == cid)
        found = {leg["name"]: next((c for c in leg.get("claims") or [] if c["id"] == cid), None) for leg in legs}
        row = {"id": cid, "section": first.get("section"), "tier": first.get("tier"),
               "verdicts": {name: (c or {}).get("verdict") for name, c in found.items()}}
        regressions = [name for name, c in found.items() if (c or {}).get("regression")]
        missing = unreached([(leg, found[leg["name"]]) for leg in legs])
        if regressions:
            row["regressions"] = regressions  # fails its recorded expectation (the report's red) whatever its verdict
        if missing:
            row["not_reached"] = missing
        rows.append(row)
    columns = [{k: v for k, v in leg.items() if k != "claims"} for leg in legs]
    return {"schema": SCHEMA, "rel_tolerance": rtol, "legs": columns, "claims": rows, "steps": steps}


# --- rendering ---------------------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:6px;text-align:left;vertical-align:top;max-width:360px}
.v-pass{background:#e5f5e0}.v-corrected{background:#deebf7}.v-refuted{background:#fee0b6}
.v-unsupported{background:#f2e6f7}.v-fail,.regression{background:#fcbba1}.v-skip,.v-none{background:#eee}
.not-reached{color:#777;font-style:italic}.noise{color:#777}
.not-installed{background:repeating-linear-gradient(45deg,#f4f4f4,#f4f4f4 6px,#e4e4e4 6px,#e4e4e4 12px);color:#777}
.changed{outline:3px solid #d62728;outline-offset:-3px}.safe{background:#e5f5e0}.step-changed{background:#fde0dd}
.step-other{background:#fff3cd}.tests-failed{color:#b2182b;font-weight:bold}ul{margin:4px 0;padding-left:16px}small,.moved{font-size:12px}
pre{white-space:pre-wrap;font-size:11px;max-height:160px;overflow:auto}
"""


def fmt(value) -> str:
    if _is_number(value):
        return f"{value:.6g}"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:119] + "…"


def _moved_items(change: dict) -> str:
    items = []
    if change["verdict"]:
        items.append(f"<li><b>verdict: {escape(str(change['verdict'][0]))} → {escape(str(change['verdict'][1]))}</b></li>")
    if change.get("regression"):
        items.append("<li><b>regression: " + " → ".join("yes" if r else "no" for r in change["regression"]) + "</b></li>")
    for m in change["evidence"][:40]:
        old, new = (fmt(m[k]) if k in m else "—" for k in ("old", "new"))
        items.append(f"<li>{escape(m['key'])}: {escape(old)} → {escape(new)}</li>")
    if len(change["evidence"]) > 40:
        items.append(f"<li>… {len(change['evidence']) - 40} more figures (matrix.json has them all)</li>")
    return f'<ul class="moved">{"".join(items)}</ul>'


def _tests_note(tests: dict | None) -> str:
    """Under a leg's name: the suite's summary line, and its failing tests (claims or not) listed."""
    if not tests or tests.get("summary") is None:
        return '<br><small class="tests">tests: no summary in the log</small>' if tests is not None else ""
    failed = tests.get("failed") or []
    items = "".join(f"<li>{escape(t)}</li>" for t in failed)
    cls = "tests tests-failed" if failed else "tests"
    listing = f'<ul class="moved">{items}</ul>' if failed else ""
    return f'<br><small class="{cls}">{escape(tests["summary"])}</small>{listing}'


def render(matrix: dict) -> str:
    """One self-contained page (inline CSS, no script, no external asset)."""
    legs = matrix["legs"]
    into = {s["to"]: s for s in matrix["steps"]}  # the step that leads into each column
    varying = [p for p in sorted({p for leg in legs for p in leg["versions"]})
               if len({leg["versions"][p] for leg in legs if leg["versions"].get(p) is not None}) > 1]
    head = ""
    for leg in legs:
        shown = varying if leg["installed"] else sorted(leg["versions"])  # a leg that did not install: its pins
        versions = "<br>".join(f"{escape(p)} {escape(str(leg['versions'].get(p, '—')))}" for p in shown)
        if leg["installed"]:
            code = (f"code {leg.get('source_digest')}" if not leg.get("git_commit") else
                    str(leg["git_commit"]) + (f" + edits, code {leg['source_digest']}" if leg.get("git_dirty") else ""))
            note = (f"{escape(leg['hardware'])}, suite {escape(code)}, run "
                    f"{escape(str(leg.get('run')))}") + ("" if leg.get("complete") else
                                                                                        " <b>(incomplete run)</b>")
            head += (f'<th class="leg">{escape(leg["name"])}<br><small>{versions}<br>{note}</small>'
                     f'{_tests_note(leg.get("tests"))}</th>')
        else:
            head += (f'<th class="leg not-installed">{escape(leg["name"])}<br><b>{NOT_INSTALLED}</b><br><small>{versions}'
                     f'</small><details><summary>why</summary><pre>{escape(leg["install_error"])}</pre></details></th>')
    step_cells = ""
    for leg in legs:
        s = into.get(leg["name"])
        if s is None:
            step_cells += "<td>—</td>"
            continue
        kind = {"safe": "safe", "changed": "step-changed"}.get(s["status"], "step-other")
        versions = "<br>".join(f"{escape(p)} {escape(str(a))} → {escape(str(b))}" for p, (a, b) in s["versions"].items())
        origin = f"from {s['from']}: " if s["from"] else ""
        tests = s.get("tests") or {}
        listed = "".join(f"<li>{label}: {escape(t)}</li>" for key, label in (("newly_failing", "newly failing"),
                                                                           ("no_longer_failing", "no longer failing"))
                         for t in tests.get(key) or [])
        step_cells += (f'<td class="step {kind}" data-status="{escape(s["status"])}">{escape(origin)}'
                       f'<b>{escape(s["line"])}</b><br><small>{versions}</small>'
                       f'{f"<ul class=moved>{listed}</ul>" if listed else ""}</td>')
    rows = ""
    for row in matrix["claims"]:
        cells = ""
        for leg in legs:
            if not leg["installed"]:
                cells += f'<td class="cell not-installed">{NOT_INSTALLED}</td>'
                continue
            verdict = row["verdicts"].get(leg["name"])
            s = into.get(leg["name"]) or {}
            change = s.get("changed", {}).get(row["id"])
            noise = (s.get("noise") or {}).get(row["id"])
            if leg["name"] in row.get("not_reached", []):
                cells += f'<td class="cell v-none not-reached">{NOT_REACHED} (incomplete run)</td>'
                continue
            regression = leg["name"] in row.get("regressions", []) and verdict != "fail"
            cls = f"cell v-{verdict or 'none'}" + (" regression" if regression else "") + (" changed" if change else "")
            label = escape(verdict or "—") + (" — <b>regression</b> (outside its recorded bounds)" if regression else "")
            quiet = (f'<br><small class="noise">{len(noise)} figure{"s" if len(noise) != 1 else ""} moved within '
                     f'GPU run-to-run noise (timings, held-out scores)</small>' if noise else "")
            cells += f'<td class="{cls}">{label}{_moved_items(change) if change else ""}{quiet}</td>'
        rows += (f'<tr class="claim" data-claim="{escape(row["id"])}"><th>{escape(row["id"])}<br>'
                 f'<small>{escape(str(row["section"]))}, {escape(str(row["tier"]))}</small></th>{cells}</tr>')
    summary = "".join(f'<li data-status="{escape(s["status"])}">{escape(str(s["from"] or "—"))} → {escape(s["to"])}: '
                      f'<b>{escape(s["line"])}</b></li>' for s in matrix["steps"])
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Release matrix</title>
<style>{STYLE}</style></head><body><h1>Release matrix</h1>
<p>{len(matrix["claims"])} claims × {len(legs)} legs. A cell is the claim's verdict in that leg; a red outline marks a
claim whose verdict or evidence moved from the leg before (figures beyond a relative tolerance of
{matrix["rel_tolerance"]:g}, old → new). "{SAFE}" says no claim moved and no test newly failed; under each leg's name,
the suite's summary line and the tests that failed in it (a claim's test or any other). A cell marked
<b>regression</b> is outside its recorded bounds (the report's red) whatever its verdict. Between GPU legs, timings
and held-out scores move from run to run at the same versions: they are shown apart, never as a change (the claims
judge them with their own statistics). A claim an interrupted run never reached is "{NOT_REACHED}", not compared.
What the suite does not check, it cannot see.</p>
<h2>Upgrade steps</h2><ul id="steps">{summary or "<li>fewer than two installed legs: no step</li>"}</ul>
<table id="matrix"><thead><tr><th>claim</th>{head}</tr><tr class="steps"><th>upgrade step</th>{step_cells}</tr></thead>
<tbody>{rows}</tbody></table></body></html>
"""


def write(matrix: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "matrix.json", out / "matrix.html"
    json_path.write_text(json.dumps(matrix, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    html_path.write_text(render(matrix), encoding="utf-8")
    return json_path, html_path


def matrix_main(paths: list[str], out: str | Path = "reports/matrix", keep_order: bool = False,
                rtol: float = REL_TOLERANCE) -> int:
    """Exit 0 whatever the steps say (a moved claim is a finding of the matrix, not a failure of building it)."""
    matrix = build(paths, keep_order=keep_order, rtol=rtol)
    json_path, html_path = write(matrix, Path(out))
    for leg in matrix["legs"]:
        if not leg["installed"]:
            print(f"{leg['name']}: {NOT_INSTALLED}")
    for s in matrix["steps"]:
        print(f"{s['from'] or '-'} -> {s['to']}: {s['line']}")
    print(f"matrix: {html_path} and {json_path}")
    return 0


# --- recording a leg (CI) -------------------------------------------------------------------------------------


def pins(constraints: Path, strict: bool = False) -> dict[str, str]:
    """{name as written: version} from a constraints file (one `NAME==VERSION` a line, '#' comments). Lenient by
    default (a leg's record keeps what it can read); `strict` refuses any other line (a bundle holds exact versions:
    harness.bundle.read_pins builds on this)."""
    out = {}
    for line in Path(constraints).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip()] = version.strip()
        elif line and strict:
            raise ValueError(f"{constraints}: {line!r} is not a pin (NAME==VERSION): a bundle holds exact versions")
    return out


SUMMARY = re.compile(r"^=*\s*(\d+ (?:failed|passed|errors?|skipped|deselected|xfailed|xpassed|warnings?)\b.*"
                     r" in \d[\d.]*s\b.*?)\s*=*$")
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+?\.py\S*)(?: - .*)?$")
EXIT = re.compile(r"^pytest exit (\d+)$")


def pytest_tests(text: str) -> dict | None:
    """From a leg's log (pytest's output, `-q` or not, inside tox's or not): the last summary line ("3 failed, 395
    passed, … in 956.38s"), the tests of pytest's short summary that failed or errored (each once, in log order), and
    the exit status where the log says `pytest exit N` (a leg script that runs pytest outside tox); None when no summary line is there (a
    leg that never ran, or was killed: its failures are unknown)."""
    lines = text.splitlines()
    summaries = [i for i, line in enumerate(lines) if SUMMARY.match(line.strip())]
    if not summaries:
        return None
    last = summaries[-1]
    start = max((i for i in summaries if i < last), default=-1) + 1  # this run's short summary only
    failed = list(dict.fromkeys(m.group(1) for line in lines[start:last] if (m := FAILED.match(line.strip()))))
    exits = [int(m.group(1)) for line in lines[last:] if (m := EXIT.match(line.strip()))]
    return {"summary": SUMMARY.match(lines[last].strip()).group(1), "failed": failed,
            **({"exit": exits[0]} if exits else {})}


def record_leg(leg: str, reports: Path, constraints: Path | None = None, log: Path | None = None) -> Path:
    """reports/<leg>/leg.json after a leg ran: its name, its pins, `install_error` when the leg never reached its
    tests (no results.json: pytest writes one as it starts, so a leg without one failed to install or start; then the
    log's tail says why), and `tests`: the suite's summary line and failing tests read from the log (None without a
    log or a summary line in it)."""
    error = None
    text = log.read_text(errors="replace") if log and log.is_file() else ""
    if _results(reports) is None:
        tail = "\n".join(text.splitlines()[-40:])
        error = f"no results.json: the leg failed before its tests started\n{tail}".strip()
    record = {"leg": leg, "pins": pins(constraints) if constraints and constraints.is_file() else {},
              "install_error": error, "tests": pytest_tests(text)}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / LEG_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return reports / LEG_FILE


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.matrix record-leg LEG [--log FILE]` (the release-matrix workflow, after each leg)."""
    p = argparse.ArgumentParser(prog="python -m harness.matrix")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("record-leg", help="write reports/<leg>/leg.json (install_error when no results.json; the "
                                          "suite's summary and failing tests from --log)")
    s.add_argument("leg")
    s.add_argument("--reports", type=Path, help="the leg's report folder (default reports/<leg>)")
    s.add_argument("--constraints", type=Path, help="its pins (default constraints/<leg>.txt)")
    s.add_argument("--log", type=Path, help="the leg's install/test log: its tail is kept if the leg did not install; "
                                            "its pytest summary and failing tests are recorded")
    args = p.parse_args(argv)
    path = record_leg(args.leg, args.reports or Path("reports") / args.leg,
                      args.constraints or Path("constraints") / f"{args.leg}.txt", args.log)
    print(path.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
