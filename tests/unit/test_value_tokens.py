"""harness.value_tokens: which copied values must be re-spelled (Gemma 3's tokenizer cuts a word differently after a
space than after a quote), and the per-slot table of how often each kind was copied right."""

from __future__ import annotations

import json

import pytest

from harness.value_tokens import RESPELLED, SAME, markdown, respelled, split


def _answer(**slots) -> str:
    return json.dumps(slots, ensure_ascii=False)


@pytest.mark.parametrize(("city", "expected"), [
    # request: "▁الجزائر" (one piece); answer after the quote: "ال" "جز" "ائر" (measured with the embedded tokenizer)
    ("الجزائر", True), ("الخرطوم", True), ("صنعاء", True),
    # "▁ع" "جم" "ان" / "ع" "جم" "ان": the same pieces
    ("عجمان", False), ("مكة", False),
])
def test_a_city_after_a_space_is_respelled_in_the_answer_or_not(tokenizer, city, expected):
    request = f"ما حالة الطقس في {city} اليوم؟"
    assert respelled(tokenizer, request, _answer(action="get_weather", city=city, day="today"), city) is expected


def test_a_value_written_onto_a_prefix_is_cut_as_after_a_quote(tokenizer):
    # "لـهبة": "to" written onto the name; no word marker, so the pieces are the answer's: "ه" "بة" "منصور" (measured).
    request = "ابعت رسالة لـهبة منصور: وصلت"
    answer = _answer(action="send_message", contact="هبة منصور", message="وصلت")
    assert respelled(tokenizer, request, answer, "هبة منصور") is False
    assert respelled(tokenizer, request, answer, "غير موجود") is None  # not a copy: left out


def test_split_counts_each_kind_and_whether_the_copy_was_right(tokenizer):
    rows = []
    for city, output_city in (("الجزائر", "الجزالة"), ("الخرطوم", "الخرطوم"), ("عجمان", "عجمان"), ("مكة", "مكه")):
        answer = _answer(action="get_weather", city=city, day="today")
        rows.append({"request": f"الطقس في {city} اليوم", "expected": answer,
                     "output": _answer(action="get_weather", city=output_city, day="today")})
    rows.append({"request": "الطقس في عدن", "expected": _answer(action="get_weather", city="عدن", day="today"),
                 "output": "not json"})
    result = split(rows, tokenizer)
    cells = result["per_slot"]["get_weather.city"]
    assert cells[RESPELLED]["n"] == 2 and cells[RESPELLED]["right"] == 1  # الجزائر wrong, الخرطوم right
    assert cells[SAME]["n"] + cells[RESPELLED]["n"] == 5 and cells[SAME]["right"] == 1  # عجمان right; مكه and bad JSON wrong
    assert result["total"] == {k: cells[k] for k in (SAME, RESPELLED)}
    assert "get_weather.city" in markdown(result)


def test_the_planted_fault_of_comparing_the_value_alone_is_caught(tokenizer, monkeypatch):
    """Tokenizing the bare value in both places calls every value 'same': the split would hide the cause."""
    import harness.value_tokens as vt

    monkeypatch.setattr(vt, "_pieces", lambda tok, text, start, end: tuple(tok.tokenize(text[start:end])))
    assert not vt.respelled(tokenizer, "الطقس في الجزائر", _answer(city="الجزائر"), "الجزائر")
