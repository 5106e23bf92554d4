"""The report's held-out evaluation: headline with its CI, exact match per function × dialect, per-slot bars."""

import json
import re
from types import SimpleNamespace

from harness.evaluate import evaluation
from harness.report import evaluation_html, plots, render

DECLARED = {"set_alarm": {"time"}, "make_call": {"contact"}}


def _eval(v2: bool = True) -> dict:
    examples, outputs = [], []
    for i in range(40):
        fn, want = (("set_alarm", {"action": "set_alarm", "time": "07:30"}) if i % 2 else
                    ("make_call", {"action": "make_call", "contact": "سهى حداد"}))
        ex = SimpleNamespace(id=f"test-{i:05d}", split="test", functions=[fn], templates=[f"{fn}#c{i % 8}"],
                             dialects=["egy" if i % 4 < 2 else "gulf"],
                             messages=[{"role": "user", "content": "طلب"},
                                       {"role": "assistant", "content": json.dumps(want, ensure_ascii=False)}])
        if v2:
            ex.template_seen, ex.values_seen = [i % 3 == 0], [i % 5 == 0]
        examples.append(ex)
        outputs.append(json.dumps(want, ensure_ascii=False) if i % 8 not in (1, 6) else '{"action": "set_alarm"}')
    return evaluation(examples, outputs, declared=DECLARED)


def _data(ft: dict) -> dict:
    return {"schema": 1, "run": "r", "complete": True, "started": "t", "claims": [], "environment": {},
            "extras": {"finetune": ft}}


def test_headline_table_and_slot_bars():
    e = _eval()
    ft = {"model": "tiny", "backend": "hf", "eval": e, "base_eval": {"exact_match": 0.05}}
    html = evaluation_html(ft)
    lo, hi = e["exact_match_ci95"]
    assert f"exact match {100 * e['exact_match']:.1f}%</b> [{100 * lo:.1f}%, {100 * hi:.1f}%]" in html
    assert "over 8 held-out combinations" in html and "base model 5.0%" in html and "AST match" in html
    table = re.search(r'<table class="fxd">.*?</table>', html).group(0)
    assert table.count("<tr>") == 1 + 2 + 1  # header, two functions, the total row
    assert "<th>egy</th><th>gulf</th>" in table and "(10)" in table
    assert 'class="seen"' in html
    page = render(_data(ft))
    assert 'id="evaluation"' in page and page.count('<svg class="plot"') == len(plots(_data(ft))) == 1
    bars = plots(_data(ft))[0]
    assert "set_alarm.time (20)" in bars and "make_call.contact (20)" in bars and "wrong: 0/20" in bars


def test_older_records_show_what_they_have():
    v1 = {k: v for k, v in _eval(v2=False).items()
          if k in ("prompts", "json_valid_rate", "action_rate", "action_accuracy", "exact_match", "per_function")}
    html = evaluation_html({"model": "m", "backend": "b", "eval": v1})
    assert "exact match" in html and "CI" not in html and "<table" not in html
    assert evaluation_html({}) == "" and evaluation_html({"eval": {"prompts": 0}}) == ""
    assert 'class="seen"' not in evaluation_html({"eval": _eval(v2=False)})
    assert plots(_data({"eval": v1})) == []


def test_the_report_draws_the_experiments_forest_plot_from_the_claims():
    """An experiment claim whose evidence holds an effect and its CI gets a row of the forest plot; none, no plot."""
    from harness.report import plots

    claim = {"id": "MASK-STABILITY", "verdict": "refuted", "expected": "refuted",
             "evidence": {"gpu": {"effect_points": -12.7, "ci_low_points": -16.0, "ci_high_points": -9.4,
                                  "delta_points": 3.0, "comparison": "masked − unmasked"}}}
    drawn = [p for p in plots({"claims": [claim], "extras": {}}) if "forest" in p]
    assert len(drawn) == 1 and "MASK-STABILITY" in drawn[0]
    assert not [p for p in plots({"claims": [], "extras": {}}) if "forest" in p]


def test_copied_values_table_from_a_tokenizer(tokenizer):
    """With the run's tokenizer the eval splits copied values into same pieces / re-spelled, and the report shows it;
    a tokenizer that cannot give offsets records why instead of losing the eval."""
    examples, outputs = [], []
    for i, (city, got) in enumerate((("الجزائر", "الجزالة"), ("عجمان", "عجمان"), ("الخرطوم", "الخرطوم"))):
        want = json.dumps({"action": "get_weather", "city": city, "day": "today"}, ensure_ascii=False)
        examples.append(SimpleNamespace(id=f"test-{i:05d}", split="test", functions=["get_weather"],
                                        templates=[f"get_weather#c{i}"], dialects=["msa"],
                                        messages=[{"role": "user", "content": f"الطقس في {city} اليوم"},
                                                  {"role": "assistant", "content": want}]))
        outputs.append(want.replace(city, got))
    e = evaluation(examples, outputs, declared={"get_weather": {"city", "day"}}, tokenizer=tokenizer)
    assert e["value_tokens"]["total"]["respelled"] == {"n": 2, "right": 1, "accuracy": 0.5}
    assert e["value_tokens"]["total"]["same"] == {"n": 1, "right": 1, "accuracy": 1.0}
    html = evaluation_html({"model": "m", "backend": "b", "eval": e})
    assert 'class="copied"' in html and "50.0% <small>(1/2)" in html
    broken = evaluation(examples, outputs, declared={"get_weather": {"city", "day"}}, tokenizer=object())
    assert "error" in broken["value_tokens"] and broken["exact_match"] == e["exact_match"]
    assert 'class="copied"' not in evaluation_html({"eval": broken})
