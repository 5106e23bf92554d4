"""A real browser opens a generated report: no console errors, every row and plot rendered, the filter works."""

import json
import re
import subprocess

import pytest

from harness.doctor import CHROMIUM_FLAGS, chromium_path
from harness.report import write_html

CHROMIUM = chromium_path()
FLAGS = [*CHROMIUM_FLAGS, "--enable-logging=stderr", "--v=0"]


@pytest.fixture
def report(tmp_path):
    import spec

    from harness.report import plots

    verdicts = {"LORA-SCALING": "corrected", "LORA-RANK": "corrected", "NF4-LOAD": "pass"}
    claims = [{"id": cid, "section": c.section, "tier": c.tier, "quote": c.quote, "summary": c.summary,
               "expected": c.expected, "verdict": verdicts.get(cid, "skip"), "regression": False, "tests": [],
               "evidence": {}, "reason": "needs a CUDA GPU", "bounds": []} for cid, c in spec.CLAIMS.items()]
    claims[[c["id"] for c in claims].index("CHECK-OUTPUT")]["evidence"] = {
        "gpu": {"per_function": {"set_alarm": {"exact_match": 0.5}, "none": {"exact_match": 1.0}}}}
    data = {"schema": 1, "run": "browser-test", "complete": True, "started": "now", "claims": claims, "environment": {},
            "extras": {"lr_schedule": {"trainer": [0, 1e-3, 5e-4], "handbook": [1e-3, 7.5e-4, 2.5e-4], "warmup": 1},
                       "finetune": {"model": "tiny", "backend": "hf", "val_loss": 1.0,
                                    "steps": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]},
                       "nf4_error_hist": {"edges": [0.0, 0.01], "shares": [0.6, 0.4]}},
            "durations": {"tests/slow/test_finetune_tiny.py::test_run": 20.5, "tests/unit/test_x.py::test_y": 0.1}}
    path = write_html(data, tmp_path / "index.html")
    return path, len(plots(data)), sum(1 for c in claims if c["verdict"] == "corrected"), len(claims)


def _chromium(*args, profile):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: apt-get install chromium chromium-driver")
def test_report_renders_in_chromium_and_filters(report, tmp_path):
    """Headless Chromium: all claim rows, all plots, no console error, and #verdict=corrected shows only those rows."""
    path, n_plots, n_corrected, n_claims = report
    full = _chromium("--dump-dom", f"file://{path}", profile=tmp_path / "p1")
    filtered = _chromium("--dump-dom", f"file://{path}#verdict=corrected", profile=tmp_path / "p2")
    shot = _chromium("--window-size=1400,2400", f"--screenshot={path.parent / 'screenshot.png'}", f"file://{path}",
                     profile=tmp_path / "p3")
    dom = full.stdout
    assert dom.count('class="claim') == n_claims
    assert dom.count('<svg class="plot"') == n_plots >= 4
    errors = [l for l in (full.stderr + filtered.stderr).splitlines() if "Uncaught" in l or re.search(r"CONSOLE.*error", l, re.I)]
    assert errors == []
    assert re.search(r'id="shown">(\d+)<', filtered.stdout).group(1) == str(n_corrected)
    assert re.search(r'id="shown">(\d+)<', dom).group(1) == str(n_claims)
    assert shot.returncode == 0 and (path.parent / "screenshot.png").stat().st_size > 10_000
