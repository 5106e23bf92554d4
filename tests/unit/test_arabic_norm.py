"""Arabic normalization and the BFCL-style AST matcher: the variants it forgives and the near misses it must not."""

import pytest

from harness.arabic_norm import ast_match, normalize_text, values_match


@pytest.mark.parametrize("variant, plain", [
    ("بـسهى", "بسهي"),                       # tatweel; alef maqsura → yeh
    ("مُحَمَّدٌ", "محمد"),                      # harakat (damma, fatha, shadda, dammatan)
    ("رحمٰن", "رحمن"),                        # superscript alef
    ("أحمد إبراهيم آمنة ٱلقدس", "احمد ابراهيم امنة القدس"),  # alef forms
    ("الساعة ٧:٣٠", "الساعة 7:30"),            # Arabic-Indic digits
    ("۱۲۳", "123"),                            # Persian digits
    ("  مرحبا \t  يا\nعلي ", "مرحبا يا علي"),  # whitespace collapsed and stripped
    ("ﻻ", "لا"),                                # presentation-form ligature (NFKC)
    ("Netflix", "netflix"),                    # code-switched English, casefolded
    ("فاطمی", "فاطمي"),                        # Persian yeh
])
def test_normalize_text(variant, plain):
    assert normalize_text(variant) == normalize_text(plain) == plain.casefold()


def test_ta_marbuta_is_kept():
    """ة and ه distinguish words; the normalization leaves them apart (documented decision)."""
    assert normalize_text("سارة") != normalize_text("ساره")


@pytest.mark.parametrize("got, want", [
    ("30", 30), ("٣٠", 30), (30.0, 30), (30, "30"),
    ("7:30", "07:30"), ("٧:٣٠", "07:30"), ("07:30", "07:30"),
    ("2026-3-5", "2026-03-05"), ("أحمد", "احمد"), ("القاهره ", "القاهره"),
    ({"a": "إبراهيم"}, {"a": "ابراهيم"}), (["٣", "علي"], [3, "على"]), (None, None), (True, True),
])
def test_values_match(got, want):
    assert values_match(got, want)


@pytest.mark.parametrize("got, want", [
    ("31", 30), ("٣١", 30), (30.5, 30), ("30 دقيقة", 30), (True, 1), (1, True),  # other digits; bool is no number
    ("7:35", "07:30"), ("19:30", "07:30"), ("7:30 الصبح", "07:30"),            # other time; a copied word
    ("2026-03-06", "2026-03-05"), ("سارة", "ساره"), ("محمد", "محمد علي"),       # other date / word / a cut name
    (None, "x"), ("x", None), ({"a": 1, "b": 2}, {"a": 1}), ([1], [1, 2]), (3, "three"),
])
def test_values_do_not_match(got, want):
    assert not values_match(got, want)


WANT = {"action": "convert_currency", "amount": 250, "from_currency": "USD", "to_currency": "EGP"}


def test_ast_match_forgives_spelling_not_values():
    assert ast_match({"action": "convert_currency", "amount": "٢٥٠", "from_currency": " usd", "to_currency": "EGP"}, WANT)
    assert ast_match(dict(reversed(list(WANT.items()))), WANT)  # key order is irrelevant


@pytest.mark.parametrize("got", [
    {**WANT, "amount": 205},                                           # different digits
    {**WANT, "amount": "٢٠٥"},
    {**WANT, "from_currency": "EGP", "to_currency": "USD"},            # swapped from/to
    {**WANT, "note": "x"},                                             # an extra key
    {k: v for k, v in WANT.items() if k != "to_currency"},             # a missing key
    {**WANT, "action": "convert"},                                     # another function name
    {**WANT, "action": "Convert_Currency"},                            # the name is compared exactly
    None,                                                              # invalid JSON
])
def test_ast_near_misses_do_not_match(got):
    assert not ast_match(got, WANT)


def test_ast_match_on_a_time_and_a_name():
    want = {"action": "create_event", "title": "اجتماع الفريق", "date": "2026-11-08", "time": "07:05"}
    assert ast_match({"action": "create_event", "title": "اجتماع  الفريق", "date": "2026-11-8", "time": "٧:٠٥"}, want)
    assert not ast_match({"action": "create_event", "title": "اجتماع الفريق", "date": "2026-11-08", "time": "7:50"}, want)
