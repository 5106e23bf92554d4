"""reports/<run>/index.html: one self-contained compliance report (inline CSS, JS and SVG; no network)."""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path

from harness import svg

ORDER = ("fail", "refuted", "unsupported", "corrected", "pass", "skip")
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{margin:0 0 4px}
.banner{padding:12px 16px;border-radius:6px;margin:12px 0;font-size:18px;font-weight:600}
.certified{background:#e5f5e0}.regressions{background:#fde0dd}.incomplete{background:#fff3cd}
.environment{background:#e0ecf8}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:6px;text-align:left;vertical-align:top}
.v{font-weight:600;padding:2px 6px;border-radius:4px}.v-pass{background:#e5f5e0}.v-corrected{background:#deebf7}
.v-refuted{background:#fee0b6}.v-unsupported{background:#f2e6f7}.v-fail{background:#fcbba1}.v-skip{background:#eee}
.reg td{background:#fff0ee}.q{color:#555;font-style:italic}pre{white-space:pre-wrap;max-height:360px;overflow:auto;
background:#f7f7f7;padding:8px;font-size:12px}.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0}
.counts span{margin-right:12px}.filters{margin:12px 0}.filters select{margin-right:12px}
"""
SCRIPT = """
function applyFilter(){var v=document.getElementById('f-verdict').value,s=document.getElementById('f-section').value;
var shown=0;document.querySelectorAll('tr.claim').forEach(function(r){var ok=(!v||r.dataset.verdict==v)&&(!s||r.dataset.section==s);
r.style.display=ok?'':'none';if(ok)shown++;});document.getElementById('shown').textContent=shown;}
document.addEventListener('DOMContentLoaded',function(){document.getElementById('f-verdict').onchange=applyFilter;
document.getElementById('f-section').onchange=applyFilter;
var m=/verdict=([a-z]+)/.exec(location.hash);if(m){document.getElementById('f-verdict').value=m[1];}applyFilter();});
"""


def status(data: dict) -> tuple[str, str]:
    """The banner: incomplete, regressions, environment problem (claims that could not be checked here; not a
    regression) or certified."""
    if not data.get("complete"):
        return "incomplete", "Incomplete run — the report is partial"
    if any(c.get("regression") for c in data["claims"]):
        from harness.results import regression_headline

        return "regressions", "Regressions found — " + regression_headline(data)
    problems = data.get("environment_problems") or []
    if problems:
        claims = sorted({cid for p in problems for cid in p["claims"]})
        checks = sorted({t for p in problems if not p["claims"] for t in p.get("tests") or []})
        what = ([f"{len(claims)} claim(s) could not be fully checked on this machine ({', '.join(claims)})"] if claims
                else []) + ([f"{len(checks)} check(s) of the suite's instruments could not run here"] if checks else [])
        return "environment", (f"Environment problem — not a regression: {'; '.join(what)}; fix the environment and "
                               "run again")
    return "certified", "Certified: every claim that ran matches its recorded expectation"


def environment_problems_html(data: dict) -> str:
    items = "".join(f"<li><b>{escape(', '.join(p['claims'] or p.get('tests') or []))}</b>: {escape(p['reason'])}</li>"
                    for p in data.get("environment_problems") or [])
    return f'<ul class="envproblems">{items}</ul>' if items else ""


def expected_cell(claim: dict) -> str:
    """The recorded expectation of each context that ran ("a|b": either verdict is as recorded), else the claim's."""
    shown = sorted(set((claim.get("expected_by_context") or {}).values())) or [claim["expected"]]
    return "<br>".join(f'<span class="v v-{escape(e.split("|")[0])}">{escape(e.replace("|", " or "))}</span>' for e in shown)


def key_evidence(claim: dict) -> str:
    parts = []
    for context, evidence in (claim.get("evidence") or {}).items():
        items = [f"{k}={v}" for k, v in evidence.items() if isinstance(v, (int, float, str, bool)) and k != "truth"
                 and len(str(v)) < 60][:4]
        parts.append(f"<b>{escape(context)}</b>: {escape(', '.join(items))}")
    return "<br>".join(parts)


def plots(data: dict) -> list[str]:
    """Plots from the claims' evidence and the run's extras; each appears only where its data exists."""
    claims = {c["id"]: c for c in data["claims"]}
    extras = data.get("extras") or {}
    out = []
    lr = extras.get("lr_schedule")
    if lr:
        out.append(svg.line_chart("Learning rate: the optimizer vs the handbook's formula",
                                  {"trainer (measured)": list(enumerate(lr["trainer"])),
                                   "handbook ½η(1+cos(tπ/T))": list(enumerate(lr["handbook"]))},
                                  "step", "learning rate", marks=[(lr["warmup"], f"warmup ends ({lr['warmup']})")]))
    ft = extras.get("finetune")
    if ft and ft.get("steps"):
        train = [(s["step"], s["loss"]) for s in ft["steps"] if "loss" in s]
        series = {f"train loss ({ft.get('model')}/{ft.get('backend')})": train}
        if ft.get("val_loss") is not None and train:
            series["validation loss (end)"] = [(train[0][0], ft["val_loss"]), (train[-1][0], ft["val_loss"])]
        out.append(svg.line_chart("Loss curve", series, "step", "loss (log)", log_y=True))
    vram = (claims.get("GC-VRAM", {}).get("evidence") or {}).get("gpu", {}).get("grid") or extras.get("vram_grid")
    if vram:
        groups: dict = {}
        for row in vram:
            groups.setdefault(f"{row['seq']}×{row['batch']}", {})[f"checkpointing={row['mode']}"] = \
                None if row.get("oom") else row.get("peak_allocated_mib")
        out.append(svg.bar_chart("Peak VRAM of a QLoRA step (MiB) per checkpointing mode and seq×batch", groups, "MiB"))
    hist = extras.get("nf4_error_hist")
    if hist:
        out.append(svg.bar_chart("NF4 round-trip error |w−ŵ|/absmax on N(0,1) (bound 0.1519)",
                                 {f"{b:.3f}": {"share of elements": v} for b, v in zip(hist["edges"], hist["shares"])}, "share"))
    q8 = (claims.get("GGUF-Q8-ERROR", {}).get("evidence") or {})
    for context, evidence in q8.items():
        per = evidence.get("per_tensor_kind")
        if per:
            out.append(svg.bar_chart(f"Q8_0 max error / block amax per tensor kind ({context}; bound 0.0045)",
                                     {k: {"max error / amax": v} for k, v in per.items()}, "ratio", ymax=0.0045))
    ft_eval = (extras.get("finetune") or {}).get("eval") or {}
    if ft_eval.get("per_slot"):
        out.append(slot_bars(ft_eval["per_slot"], f"Held-out arguments per slot ({(extras.get('finetune') or {}).get('model')})"))
    for context, evidence in (claims.get("CHECK-OUTPUT", {}).get("evidence") or {}).items():
        per = evidence.get("per_function")
        if per:
            out.append(svg.bar_chart(f"Held-out exact match per function ({context})",
                                     {fn: {"exact match": row["exact_match"]} for fn, row in per.items()}, "exact match", ymax=1.0))
    from harness.experiment_stats import forest_plot_svg, forest_rows

    rows = forest_rows(data)
    if rows:  # the experiment claims: effect, 95% CI and ±δ per experiment
        out.append(forest_plot_svg(rows))
    return [p for p in out if p]


def _scope_html(extras: dict) -> str:
    """What this run left out on purpose: the suite's self-tests (certify), the experiment claims (a GPU target of
    their own)."""
    items = []
    self_tests = extras.get("self_tests_not_run")
    if self_tests and self_tests.get("count"):
        items.append(f'{int(self_tests["count"])} self-tests of the suite were not run here: {escape(self_tests["why"])} '
                     f'(<code>python -m harness certify --with-self-tests</code> runs them too).')
    experiments = extras.get("experiments_not_run")
    if experiments and experiments.get("claims"):
        items.append(f'The experiment claims {escape(", ".join(experiments["claims"]))} were not run here: '
                     f'{escape(experiments["why"])}.')
    return f'<h2>Scope</h2><p id="scope">{"<br>".join(items)}</p>' if items else ""


def render(data: dict) -> str:
    kind, headline = status(data)
    counts: dict[str, int] = {}
    for c in data["claims"]:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    sections = sorted({c["section"] for c in data["claims"]})
    rows = []
    for c in data["claims"]:
        evidence_json = escape(json.dumps(c.get("evidence"), indent=1, ensure_ascii=False, default=str))
        violations = "".join(f"<li>{escape(v)}</li>" for v in c.get("violations") or [])
        rows.append(
            f'<tr class="claim{" reg" if c.get("regression") else ""}" data-verdict="{c["verdict"]}" data-section="{escape(c["section"])}">'
            f'<td><b>{escape(c["id"])}</b><br><small>{escape(c["tier"])}</small></td><td>{escape(c["section"])}</td>'
            f'<td><span class="q">“{escape(c["quote"])}”</span><br>{escape(c["summary"])}</td>'
            f'<td>{expected_cell(c)}</td>'
            f'<td><span class="v v-{c["verdict"]}">{c["verdict"]}</span>{" <b>REGRESSION</b>" if c.get("regression") else ""}</td>'
            f'<td>{key_evidence(c)}<br><small>bounds: {escape("; ".join(c.get("bounds") or [])) or "—"}</small>'
            f'{f"<ul>{violations}</ul>" if violations else ""}'
            f'<details><summary>full evidence, tests</summary><pre>{evidence_json}</pre>'
            f'<small>{"<br>".join(escape(t) for t in c.get("tests") or []) or "no test ran"}</small></details></td>'
            f'<td>{escape(c.get("reason") or c.get("environment_problem") or "")}</td></tr>')
    env = data.get("environment") or {}
    env_rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in env.items() if k != "packages")
    pkg_rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in sorted((env.get("packages") or {}).items()))
    previous = data.get("previous_run") or {}
    prev_note = (f'<p class="banner incomplete">The previous run ({escape(str(previous.get("run")))}) did not finish: '
                 f'its report is partial.</p>' if previous and not previous.get("complete") else "")
    figures = "".join(f"<figure>{p}</figure>" for p in plots(data))
    extra_sections = ""
    faults = (data.get("extras") or {}).get("faults")
    if faults:
        extra_sections += "<h2>Planted regressions</h2>" + _faults_table(faults)
    extra_sections += _scope_html(data.get("extras") or {})
    slowest = list((data.get("durations") or {}).items())[:10]
    if slowest:
        slow_rows = "".join(f"<tr><td>{escape(nodeid)}</td><td>{seconds:.1f}</td></tr>" for nodeid, seconds in slowest)
        extra_sections += (f"<h2>Where the time went</h2><p>the slowest tests of {len(data['durations'])} (setup + call + "
                           f"teardown, seconds; all of them in results.json under <code>durations</code>)</p>"
                           f"<table><tr><th>test</th><th>s</th></tr>{slow_rows}</table>")
    timeline = timeline_svg(data.get("timeline") or {})
    if timeline:
        extra_sections += (f"<h3>Timeline</h3><p>the background runs and the longest tests, as they ran (results.json "
                           f"<code>timeline</code>); a pale bar was still going when the report was written</p>"
                           f"<figure>{timeline}</figure>")
    extra_sections += dynamo_html(((data.get("extras") or {}).get("finetune") or {}).get("dynamo") or {})
    diff = (data.get("extras") or {}).get("diff_html")
    if diff:
        extra_sections += diff
    options = "".join(f'<option value="{v}">{v} ({counts.get(v, 0)})</option>' for v in ORDER)
    section_options = "".join(f'<option value="{escape(s)}">{escape(s)}</option>' for s in sections)
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Handbook compliance report {escape(str(data.get("run")))}</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head><body>
<h1>Handbook compliance report</h1><div>run {escape(str(data.get("run")))}, started {escape(str(data.get("started")))}</div>
<div class="banner {kind}" id="status">{escape(headline)}</div>{environment_problems_html(data)}{prev_note}
<div class="counts">{"".join(f'<span class="v v-{v}">{v}: {counts.get(v, 0)}</span>' for v in ORDER)}</div>
<h2>Claims</h2><div class="filters">verdict <select id="f-verdict"><option value="">all</option>{options}</select>
section <select id="f-section"><option value="">all</option>{section_options}</select> showing <span id="shown"></span></div>
<table id="claims"><thead><tr><th>ID</th><th>section</th><th>handbook</th><th>expected</th><th>observed</th><th>evidence</th><th>skip reason / error</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{evaluation_html((data.get("extras") or {}).get("finetune") or {})}
<h2>Plots</h2><div class="plots">{figures or "<p>No plotted data in this run.</p>"}</div>{extra_sections}
<h2>Environment</h2><table>{env_rows}</table><h3>Packages</h3><table>{pkg_rows}</table>
</body></html>"""


TIMELINE_ROWS = 40
TIMELINE_RUN_ROWS = 30  # the GPU tier with its experiments queues ~55 runs: the longest 30, the rest counted


def timeline_svg(timeline: dict) -> str:
    """The session's timeline (harness.results.RunRecorder.timeline): the longest background runs (with their records'
    phases; TIMELINE_RUN_ROWS at most), then the longest tests up to TIMELINE_ROWS rows in all, in order of start, and
    a count of what was left out. Where the background runs are the critical path (the GPU tier's reference run),
    that is where to look; where there are none, the tests alone."""
    written = timeline.get("written_s") or 0.0
    runs = [(f"{r['queue']}: {r['name']}", r["start_s"], r["end_s"], r["queue"], r.get("phases"))
            for r in timeline.get("runs") or []]
    tests = [(nodeid.split("::", 1)[-1], span[0], span[1], "test") for nodeid, span in (timeline.get("tests") or {}).items()]
    longest = lambda row: -((row[2] if row[2] is not None else max(written, row[1])) - row[1])  # noqa: E731
    shown_runs = sorted(runs, key=longest)[:TIMELINE_RUN_ROWS]
    shown_tests = sorted(tests, key=longest)[:TIMELINE_ROWS - len(shown_runs)]
    rows = sorted(shown_runs + shown_tests, key=lambda row: row[1])
    if not rows:
        return ""
    end = max([written] + [r[2] if r[2] is not None else r[1] for r in rows])
    legend = list(dict.fromkeys(["test"] + [r[3] for r in shown_runs]))
    left_out = [f"{n} {what}" for n, what in ((len(runs) - len(shown_runs), "shorter runs"),
                                              (len(tests) - len(shown_tests), "shorter tests")) if n]
    return svg.timeline_chart("Timeline of the session", rows, end, legend,
                              note=f"not shown: {', '.join(left_out)}" if left_out else "")


SLOT_STATUS = (("correct", "#2ca02c"), ("wrong", "#d62728"), ("missing", "#bbbbbb"))


def slot_bars(per_slot: dict, title: str) -> str:
    """Per-slot outcomes as horizontal stacked bars (correct / wrong / missing shares of the expected arguments,
    function.slot on the left): with ~25 slots, labels read horizontally where rotated ones would be clipped."""
    rows = [(k, r) for k, r in per_slot.items() if r.get("n")]
    if not rows:
        return ""
    label_w, bar_w, row_h, top = 190, 330, 14, 26
    height = top + row_h * len(rows) + 8
    body = "".join(f'<rect x="{label_w + 10 + i * 80}" y="6" width="10" height="10" fill="{c}"/>'
                   f'<text x="{label_w + 24 + i * 80}" y="15" font-size="11">{name}</text>'
                   for i, (name, c) in enumerate(SLOT_STATUS))
    for j, (key, r) in enumerate(rows):
        y, x = top + j * row_h, label_w
        body += (f'<text x="{label_w - 4}" y="{y + row_h - 4}" font-size="10" text-anchor="end">{escape(key)} '
                 f'({r["n"]})</text>')
        for status, color in SLOT_STATUS:
            w = bar_w * r.get(status, 0) / r["n"]
            body += (f'<rect x="{x:.1f}" y="{y + 1}" width="{w:.1f}" height="{row_h - 2}" fill="{color}">'
                     f'<title>{escape(key)} {status}: {r.get(status, 0)}/{r["n"]}</title></rect>')
            x += w
        body += f'<text x="{label_w + bar_w + 4}" y="{y + row_h - 4}" font-size="10">{_pct(r.get("accuracy"))}</text>'
    width = label_w + bar_w + 50
    return (f'<svg class="plot" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{body}</svg>')


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""


def dynamo_html(dynamo: dict) -> str:
    """What torch's compiler did again in the reference run (extras.finetune.dynamo, harness.record_facts
    .dynamo_recompiles): an upgrade that adds a shape class or a guard shows here as more recompiles, and a function
    at its recompile limit runs uncompiled from there on (slower, the same answers). Nothing where the run's
    recompile logs were off."""
    if not dynamo.get("logged"):
        return ""
    limit = dynamo.get("recompile_limit")
    at_limit = list(dynamo.get("at_the_limit") or []) + list(dynamo.get("recompile_limit_hits") or [])
    entries = dynamo.get("entries") or {}
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{count}</td><td>{escape(str(entries.get(name, '')))}</td></tr>"
                   for name, count in (dynamo.get("recompiled") or {}).items())
    warning = (f'<p class="banner incomplete">At the recompile limit: {escape("; ".join(at_limit))}: torch runs '
               f'these uncompiled from there on (slower, the same answers)</p>' if at_limit else "")
    return (f"<h3>torch's compiler in the reference run</h3>{warning}<p>{dynamo.get('recompiles', 0)} recompiles, "
            f"{dynamo.get('graph_breaks', 0)} graph breaks; recompile limit "
            f"{escape(str(limit)) if limit is not None else 'not recorded'} (results.json "
            f"<code>extras.finetune.dynamo</code>)</p>"
            + (f"<table><tr><th>function</th><th>recompiles</th><th>compiled entries</th></tr>{rows}</table>"
               if rows else ""))


def evaluation_html(ft: dict) -> str:
    """The held-out evaluation of the run behind the report (extras.finetune.eval): the headline with its 95% CI,
    exact match per function × dialect (with each function's CI) and the seen/unseen 2×2 where the data has it.
    Evaluation v2's keys (harness.scoring); an older record shows what it has."""
    e = ft.get("eval") or {}
    if not e.get("prompts"):
        return ""
    ci = e.get("ci") or {}
    base = (ft.get("base_eval") or {}).get("exact_match")
    head = (f'<p class="headline"><b>exact match {_pct(e["exact_match"])}</b>{_ci(e.get("exact_match_ci95"))}'
            + (f' (95% CI, {escape(str(ci.get("resamples")))} bootstrap resamples over {escape(str(ci.get("clusters")))} '
               f'held-out combinations)' if e.get("exact_match_ci95") else "")
            + (f'; AST match {_pct(e["ast_match"])}{_ci(e.get("ast_match_ci95"))}' if "ast_match" in e else "")
            + f'; valid JSON {_pct(e.get("json_valid_rate"))}; action accuracy {_pct(e.get("action_accuracy"))}'
            + (f'; invented keys {_pct(e["invented_key_rate"])}, invented functions {_pct(e["invented_function_rate"])}'
               if "invented_key_rate" in e else "")
            + (f"; base model {_pct(base)}" if base is not None else "")
            + f' — {e["prompts"]} items, model {escape(str(ft.get("model")))}/{escape(str(ft.get("backend")))}</p>')
    table = ""
    pfd, pf = e.get("per_function_dialect") or {}, e.get("per_function") or {}
    if pfd:
        dialects = sorted({d for row in pfd.values() for d in row})

        def cells(row: dict) -> str:
            return "".join(f'<td>{_pct(row[d]["exact_match"])} <small>({row[d]["n"]})</small></td>' if d in row
                           else "<td></td>" for d in dialects)

        rows = "".join(f'<tr><td>{escape(fn)}</td>{cells(row)}<td>{_pct(pf.get(fn, {}).get("exact_match"))}'
                       f'<small>{_ci(pf.get(fn, {}).get("exact_match_ci95"))}</small></td></tr>' for fn, row in pfd.items())
        per_dialect = e.get("per_dialect") or {}
        total = "".join(f'<td><b>{_pct(per_dialect.get(d, {}).get("exact_match"))}</b></td>' for d in dialects)
        table = (f'<table class="fxd"><tr><th>function × dialect</th>{"".join(f"<th>{escape(d)}</th>" for d in dialects)}'
                 f'<th>all (95% CI)</th></tr>{rows}<tr><td><b>all</b></td>{total}<td><b>{_pct(e["exact_match"])}</b></td>'
                 f'</tr></table>')
    seen = e.get("seen_unseen")
    if seen:
        cols = ("values_seen", "values_unseen")
        seen_rows = "".join(f'<tr><td>{escape(t.replace("_", " "))}</td>'
                            + "".join(f'<td>{_pct(seen[t][c]["exact_match"])} <small>({seen[t][c]["n"]})</small></td>'
                                      for c in cols) + "</tr>" for t in ("template_seen", "template_unseen"))
        table += (f'<h3>Seen/unseen template × values (exact match)</h3><table class="seen"><tr><th></th>'
                  f'<th>values seen</th><th>values unseen</th></tr>{seen_rows}</table>')
    copied = e.get("value_tokens") or {}
    if copied.get("total"):  # harness.value_tokens: what limits held-out exact match
        def cell(c: dict) -> str:
            return f'<td>{_pct(c["accuracy"])} <small>({c["right"]}/{c["n"]})</small></td>' if c["n"] else "<td></td>"

        copy_rows = "".join(f'<tr><td>{escape(slot)}</td>{cell(c["same"])}{cell(c["respelled"])}</tr>'
                            for slot, c in copied["per_slot"].items())
        table += ('<h3>Copied values: same pieces in request and answer vs re-spelled</h3><p><small>Gemma 3\'s tokenizer '
                  'cuts a word after a space (request) differently from after a quote (answer JSON); a re-spelled value '
                  'must be spelled out, not copied (harness.value_tokens).</small></p><table class="copied"><tr><th>slot</th>'
                  f'<th>same pieces</th><th>re-spelled</th></tr>{copy_rows}<tr><td><b>all</b></td>'
                  f'{cell(copied["total"]["same"])}{cell(copied["total"]["respelled"])}</tr></table>')
    return f'<h2 id="evaluation">Held-out evaluation</h2>{head}{table}'


def _faults_table(faults: dict) -> str:
    rows = "".join(f"<tr><td>{escape(f['id'])}</td><td>{escape(f.get('description', ''))}</td><td>{escape(f.get('expected_claim', ''))}</td>"
                   f"<td>{'caught' if f['caught'] else 'MISSED'}</td><td>{escape(', '.join(f.get('red_claims', [])))}</td></tr>"
                   for f in faults.get("faults", []))
    return (f"<p>catch rate {faults.get('caught', 0)}/{faults.get('planted', 0)}</p><table><tr><th>fault</th><th>what</th>"
            f"<th>expected to turn red</th><th>result</th><th>red claims</th></tr>{rows}</table>")


def write_html(data: dict, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render(data), encoding="utf-8")
    os.replace(tmp, path)
    return path
