"""`python -m harness diff OLD NEW`: what changed between two runs, and whether NEW regressed.

Exit 1 when NEW has a regression OLD did not, or when a claim OLD checked is skipped in NEW for any reason but
an environment problem NEW names (a failure must not hide in a skip); 0 otherwise.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

REL_TOLERANCE = 1e-6  # numeric evidence that moved by more than this (relative) is listed


def load(path: str | Path) -> dict:
    """A results.json file, a report folder, or a reports root (its `latest`)."""
    path = Path(path)
    for candidate in (path, path / "results.json", path / "latest" / "results.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"no results.json at {path} (pass a results.json, a report folder or a reports root)")


def _numbers(evidence: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in (evidence or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(_numbers(value, name + "."))
    return out


def compare(old: dict, new: dict) -> dict:
    old_claims = {c["id"]: c for c in old["claims"]}
    new_claims = {c["id"]: c for c in new["claims"]}
    flips, moved, new_regressions, unchecked = [], [], [], []
    for cid in sorted(set(old_claims) & set(new_claims)):
        a, b = old_claims[cid], new_claims[cid]
        if a["verdict"] != b["verdict"]:
            flips.append({"id": cid, "old": a["verdict"], "new": b["verdict"]})
        if a["verdict"] != "skip" and b["verdict"] == "skip":
            # Checked before, not now: a failure can hide in a skip (in a version leg, a canary whose unsloth_zoo no
            # longer imports). Only an environment problem the new run names is not counted against it.
            problem = b.get("environment_problem")
            unchecked.append({"id": cid, "old": a["verdict"], "reason": problem or b.get("reason") or "",
                              "environment_problem": bool(problem)})
        if b.get("regression") and not a.get("regression"):
            new_regressions.append(cid)
        na, nb = _numbers(a.get("evidence")), _numbers(b.get("evidence"))
        for key in sorted(set(na) & set(nb)):
            x, y = na[key], nb[key]
            if math.isnan(x) and math.isnan(y):
                continue
            if abs(x - y) > REL_TOLERANCE * max(abs(x), abs(y), 1e-12):
                moved.append({"id": cid, "key": key, "old": x, "new": y})
    pa = (old.get("environment") or {}).get("packages") or {}
    pb = (new.get("environment") or {}).get("packages") or {}
    versions = {k: {"old": pa.get(k), "new": pb.get(k)} for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)}
    return {"old_run": old.get("run"), "new_run": new.get("run"), "verdict_flips": flips, "evidence_moved": moved,
            "added": sorted(set(new_claims) - set(old_claims)), "removed": sorted(set(old_claims) - set(new_claims)),
            "versions": versions, "new_regressions": new_regressions, "newly_unchecked": unchecked}


def lost_coverage(d: dict) -> list[str]:
    """Claims checked in OLD that NEW skipped for a reason other than a named environment problem."""
    return [u["id"] for u in d.get("newly_unchecked", []) if not u["environment_problem"]]


def text(d: dict) -> str:
    lines = [f"diff {d['old_run']} -> {d['new_run']}"]
    lines += [f"  version {k}: {v['old']} -> {v['new']}" for k, v in d["versions"].items()] or ["  versions: unchanged"]
    lines += [f"  verdict {f['id']}: {f['old']} -> {f['new']}" for f in d["verdict_flips"]] or ["  verdicts: unchanged"]
    lines += [f"  evidence {m['id']} {m['key']}: {m['old']:.6g} -> {m['new']:.6g}" for m in d["evidence_moved"][:50]]
    if len(d["evidence_moved"]) > 50:
        lines.append(f"  ... {len(d['evidence_moved']) - 50} more evidence values moved")
    lines += [f"  claim added: {c}" for c in d["added"]] + [f"  claim removed: {c}" for c in d["removed"]]
    for u in d.get("newly_unchecked", []):
        kind = "environment problem" if u["environment_problem"] else "NOT CHECKED"
        lines.append(f"  {kind} {u['id']}: {u['old']} -> skip ({u['reason'][:200]})")
    lines.append(f"NEW REGRESSIONS: {', '.join(d['new_regressions'])}" if d["new_regressions"] else "no new regression")
    if lost_coverage(d):
        lines.append(f"LOST COVERAGE (checked before, skipped now): {', '.join(lost_coverage(d))}")
    return "\n".join(lines)


def html(d: dict) -> str:
    def table(rows, headers):
        body = "".join("<tr>" + "".join(f"<td>{escape(str(r.get(h)))}</td>" for h in headers) + "</tr>" for r in rows)
        return f"<table><tr>{''.join(f'<th>{h}</th>' for h in headers)}</tr>{body}</table>" if rows else "<p>none</p>"

    versions = [{"package": k, **v} for k, v in d["versions"].items()]
    return (f'<section id="diff"><h2>Diff {escape(str(d["old_run"]))} → {escape(str(d["new_run"]))}</h2>'
            f'<p><b>{"New regressions: " + escape(", ".join(d["new_regressions"])) if d["new_regressions"] else "No new regression"}</b></p>'
            f'<p><b>{"Lost coverage (checked before, skipped now): " + escape(", ".join(lost_coverage(d))) if lost_coverage(d) else "No claim lost its check"}</b></p>'
            f'<h3>Newly unchecked</h3>{table(d.get("newly_unchecked", []), ["id", "old", "reason", "environment_problem"])}'
            f'<h3>Versions</h3>{table(versions, ["package", "old", "new"])}<h3>Verdict flips</h3>{table(d["verdict_flips"], ["id", "old", "new"])}'
            f'<h3>Evidence moved</h3>{table(d["evidence_moved"][:200], ["id", "key", "old", "new"])}'
            f'<h3>Claims added / removed</h3><p>{escape(", ".join(d["added"]) or "none")} / {escape(", ".join(d["removed"]) or "none")}</p></section>')


def diff_main(old: str | Path | dict, new: str | Path | dict, html_out: str | None = None) -> int:
    """`old` and `new`: what load() takes, or results it already loaded."""
    d = compare(*(run if isinstance(run, dict) else load(run) for run in (old, new)))
    print(text(d))
    if html_out:
        Path(html_out).write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>diff</title></head><body>{html(d)}</body></html>',
                                  encoding="utf-8")
    return 1 if d["new_regressions"] or lost_coverage(d) else 0
