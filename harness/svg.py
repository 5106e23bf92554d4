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
