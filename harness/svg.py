"""Tiny inline-SVG charts for the self-contained report (no JavaScript libraries, no network)."""

from __future__ import annotations

from html import escape

W, H, PAD = 560, 260, 44
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _scale(values, lo_px, hi_px, log=False):
    import math

    vals = [math.log10(v) if log else v for v in values]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return lambda v: lo_px + ((math.log10(v) if log else v) - lo) / span * (hi_px - lo_px), lo, hi


def _frame(title: str, xlabel: str, ylabel: str, body: str, legend: list[tuple[str, str]], y_range, x_range) -> str:
    legend_svg = "".join(
        f'<rect x="{PAD + 10 + i * 150}" y="6" width="10" height="10" fill="{c}"/>'
        f'<text x="{PAD + 24 + i * 150}" y="15" font-size="11">{escape(n)}</text>' for i, (n, c) in enumerate(legend))
    return (
        f'<svg class="plot" role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f'<rect x="{PAD}" y="{PAD // 2}" width="{W - 1.5 * PAD}" height="{H - PAD - PAD // 2}" fill="none" stroke="#999"/>'
        f'{body}{legend_svg}'
        f'<text x="{W / 2}" y="{H - 6}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>'
        f'<text x="12" y="{H / 2}" font-size="11" transform="rotate(-90 12 {H / 2})" text-anchor="middle">{escape(ylabel)}</text>'
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{x_range[0]:.4g}</text>'
        f'<text x="{W - PAD / 2}" y="{H - PAD + 14}" font-size="10" text-anchor="end">{x_range[1]:.4g}</text>'
        f'<text x="{PAD - 4}" y="{H - PAD}" font-size="10" text-anchor="end">{y_range[0]:.3g}</text>'
        f'<text x="{PAD - 4}" y="{PAD // 2 + 10}" font-size="10" text-anchor="end">{y_range[1]:.3g}</text></svg>')


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
               marks: list[tuple[float, str]] = (), log_y: bool = False) -> str:
    points = [p for s in series.values() for p in s if not log_y or p[1] > 0]
    if not points:
        return ""
    sx, x0, x1 = _scale([p[0] for p in points], PAD, W - PAD / 2)
    sy, y0, y1 = _scale([p[1] for p in points], H - PAD, PAD // 2 + 4, log=log_y)
    body = ""
    for i, (name, pts) in enumerate(series.items()):
        pts = [p for p in pts if not log_y or p[1] > 0]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        body += f'<polyline fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="1.6" points="{path}"/>'
    for x, label in marks:
        body += (f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{PAD // 2}" y2="{H - PAD}" stroke="#888" stroke-dasharray="4 3"/>'
                 f'<text x="{sx(x) + 3:.1f}" y="{PAD // 2 + 24}" font-size="10">{escape(label)}</text>')
    yr = (10 ** y0, 10 ** y1) if log_y else (y0, y1)
    return _frame(title, xlabel, ylabel, body, [(n, COLORS[i % len(COLORS)]) for i, n in enumerate(series)], yr, (x0, x1))


def bar_chart(title: str, groups: dict[str, dict[str, float]], ylabel: str, ymax: float | None = None) -> str:
    """groups: category -> {series name: value}."""
    if not groups:
        return ""
    names = list(dict.fromkeys(n for g in groups.values() for n in g))
    top = ymax or max((v for g in groups.values() for v in g.values() if v is not None), default=1.0) or 1.0
    slot = (W - 1.5 * PAD) / len(groups)
    bar = slot * 0.8 / max(1, len(names))
    body = ""
    for i, (cat, values) in enumerate(groups.items()):
        for j, name in enumerate(names):
            v = values.get(name)
            if v is None:
                continue
            h = (H - PAD - PAD // 2 - 4) * min(v, top) / top
            x = PAD + i * slot + slot * 0.1 + j * bar
            body += (f'<rect x="{x:.1f}" y="{H - PAD - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                     f'fill="{COLORS[j % len(COLORS)]}"><title>{escape(cat)} {escape(name)}: {v:.4g}</title></rect>')
        body += (f'<text x="{PAD + i * slot + slot / 2:.1f}" y="{H - PAD + 12}" font-size="9" text-anchor="end" '
                 f'transform="rotate(-30 {PAD + i * slot + slot / 2:.1f} {H - PAD + 12})">{escape(cat)}</text>')
    return _frame(title, "", ylabel, body, [(n, COLORS[j % len(COLORS)]) for j, n in enumerate(names)], (0, top), (0, 0)) \
        .replace(f'>{0:.4g}</text>', '></text>', 2)


def timeline_chart(title: str, rows: list[tuple], end: float, legend: list[str], note: str = "") -> str:
    """Horizontal bars on a time axis: rows of (label, start, stop or None for still going at `end`, series[, phases]),
    one row each in the given order; series names index COLORS in the order of `legend`. `phases` ({name: seconds}, in
    the order they ran) are drawn as segments laid end to end so that the last ends with the bar (what comes before
    the first is the process's start: imports, before its record's first phase), each named where it is wide enough.
    `note` (e.g. what was left out) is written under the rows."""
    if not rows or end <= 0:
        return ""
    label_w, row_h, width = 250, 13, 760
    # the legend placed by its names' lengths (~6.5 px a character at 11 px), wrapped to more lines where it is full
    legend_svg, lx, ly = "", 10.0, 17
    for i, name in enumerate(legend):
        span = 14 + 6.5 * len(name) + 16
        if lx > 10 and lx + span > width:
            lx, ly = 10.0, ly + 16
        legend_svg += (f'<rect x="{lx:.0f}" y="{ly - 9}" width="10" height="10" fill="{COLORS[i % len(COLORS)]}"/>'
                       f'<text x="{lx + 14:.0f}" y="{ly}" font-size="11">{escape(name)}</text>')
        lx += span
    top = ly + 10 + (PAD - 27)  # the rows start below the legend's last line
    height = top + len(rows) * row_h + 28
    scale = (width - label_w - 16) / end
    step = next((s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600) if end / s <= 10), 7200)
    ticks = "".join(
        f'<line x1="{label_w + t * scale:.1f}" x2="{label_w + t * scale:.1f}" y1="{top - 6}" y2="{height - 26}" '
        f'stroke="#ddd"/><text x="{label_w + t * scale:.1f}" y="{height - 14}" font-size="10" text-anchor="middle">'
        f'{t:g}</text>' for t in range(0, int(end) + 1, step))
    body = ""
    for i, (label, start, stop, series, *rest) in enumerate(rows):
        phases = rest[0] if rest else None
        y = top + i * row_h
        color = COLORS[legend.index(series) % len(COLORS)] if series in legend else "#888"
        going = stop is None
        pale = ' fill-opacity="0.45"' if going else ""
        stop = end if going else stop
        shown = label if len(label) <= 40 else "…" + label[-39:]
        body += (f'<text x="{label_w - 6}" y="{y + 10}" font-size="10" text-anchor="end">{escape(shown)}</text>'
                 f'<rect x="{label_w + start * scale:.1f}" y="{y + 2}" width="{max(1.0, (stop - start) * scale):.1f}" '
                 f'height="{row_h - 4}" fill="{color}"{pale}>'
                 f'<title>{escape(label)}: {start:.1f}-{stop:.1f} s{" (still going)" if going else ""}</title></rect>')
        if phases and not going:
            at = max(start, stop - sum(phases.values()))
            for k, (phase, seconds) in enumerate(phases.items()):
                if at >= stop:  # phases longer than the run's span (clocks of two processes): the rest stays undrawn
                    break
                x, w = label_w + at * scale, max(0.5, min(seconds, stop - at) * scale)
                body += (f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" fill="#fff" '
                         f'fill-opacity="{0.15 if k % 2 else 0.35}" stroke="{color}" stroke-width="0.5">'
                         f'<title>{escape(label)} · {escape(phase)}: {seconds:.1f} s</title></rect>')
                if w >= 7 * len(phase) * 0.6 + 4:
                    body += (f'<text x="{x + w / 2:.1f}" y="{y + 9.5}" font-size="8" text-anchor="middle" fill="#000">'
                             f'{escape(phase)}</text>')
                at += seconds
    return (f'<svg class="plot" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{legend_svg}{ticks}'
            f'{body}<text x="{label_w + (width - label_w) / 2}" y="{height - 2}" font-size="11" text-anchor="middle">'
            f'seconds from the session\'s start</text>'
            f'{f"""<text x="10" y="{height - 2}" font-size="10">{escape(note)}</text>""" if note else ""}</svg>')
