"""Arabic normalization and the AST-style matcher of evaluation v2 (issue #16): pure functions, no torch.

Exact match (the parsed JSON object equals the expected one) stays the headline. The AST match follows BFCL's
rule for function calls (same function, same set of arguments, each value equal after normalization) so that a
run is not marked wrong for an orthographic variant that names the same value: "سهى" and "سهي", "٧:٣٠" and
"07:30", "30" and 30. It never forgives a different value: other digits, a swapped pair of currencies, a missing
or an extra key all fail it (tests/unit/test_arabic_norm.py has those near misses).

Decisions, and why:
- NFKC first: Arabic presentation forms (U+FB50-U+FEFF, e.g. the ligature "ﻻ") and combining hamza/madda
  sequences become the letters a keyboard types, so the later maps see one spelling.
- tatweel (U+0640) and the harakat (U+064B-U+0652, superscript alef U+0670) are removed: they are decoration or
  optional vocalization, never part of a name, a city or a message in this dataset.
- alef forms أ إ آ ٱ → ا: hamza on alef is written or dropped freely in everyday Arabic (احمد/أحمد).
- alef maqsura ى → ي everywhere (not only word-finally, where it is the only place it occurs anyway): Egyptian
  writing uses ى for final ي as a matter of habit (علي/على, مصطفى/مصطفي), so the choice says nothing about
  whether the model copied the value. Persian yeh ی (U+06CC) → ي for the same reason (keyboard variants).
  Ta marbuta ة and ه are NOT unified: they distinguish words (e.g. a feminine name from a pronoun suffix).
- Arabic-Indic (٠-٩) and Persian (۰-۹) digits → ASCII; whitespace runs → one space; strip; casefold (code-switched
  English nouns "Netflix"/"netflix").
- ints equal int-like strings ("30" == 30, "٣٠" == 30) and integral floats (30.0 == 30); a bool is never a
  number (Python's True == 1 would otherwise match). Times "7:30" == "07:30" (H:MM compared as numbers), dates
  "2026-3-5" == "2026-03-05".
- the action (the function name) is compared exactly, as in BFCL: a near-miss name is a different function.
"""

from __future__ import annotations

import re
import unicodedata

TATWEEL = "\u0640"
# fathatan .. sukun, and the superscript (dagger) alef.
HARAKAT = {chr(c) for c in range(0x064B, 0x0653)} | {"\u0670"}
_DROP = {ord(c): None for c in HARAKAT | {TATWEEL}}
_MAP = {
    **{ord(c): "ا" for c in "أإآٱ"},
    ord("ى"): "ي", ord("ی"): "ي",
    **{0x0660 + i: str(i) for i in range(10)},  # Arabic-Indic digits
    **{0x06F0 + i: str(i) for i in range(10)},  # Persian (Extended Arabic-Indic) digits
}
_SPACE = re.compile(r"\s+")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")
_INT = re.compile(r"^[+-]?\d+$")


def normalize_text(text: str) -> str:
    """The normalized form of a string value (see the module docstring for each step and why)."""
    text = unicodedata.normalize("NFKC", text).translate(_DROP).translate(_MAP)
    return _SPACE.sub(" ", text).strip().casefold()


def _as_int(value) -> int | None:
    """An int from an int, an integral float or an int-like string (any digit script); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = normalize_text(value)
        return int(text) if _INT.match(text) else None
    return None


def _as_time(value) -> tuple[int, int] | None:
    if not isinstance(value, str):
        return None
    m = _TIME.match(normalize_text(value))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _as_date(value) -> tuple[int, int, int] | None:
    if not isinstance(value, str):
        return None
    m = _DATE.match(normalize_text(value))
    return tuple(int(g) for g in m.groups()) if m else None


def values_match(got, want) -> bool:
    """Whether an output value names the expected value under the BFCL-style rules (module docstring)."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, dict):
        return (isinstance(got, dict) and set(got) == set(want)
                and all(values_match(got[k], want[k]) for k in want))
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(values_match(g, w) for g, w in zip(got, want))
    if isinstance(want, (int, float)) and not (isinstance(want, float) and not want.is_integer()):
        g = _as_int(got)
        return g is not None and g == _as_int(want)
    if isinstance(want, float):
        return isinstance(got, (int, float)) and float(got) == want
    if isinstance(want, str):
        for parse in (_as_time, _as_date):
            w = parse(want)
            if w is not None:
                return parse(got) == w
        if isinstance(got, (int, float)):  # expected "30" (a string), output 30
            w = _as_int(want)
            return w is not None and _as_int(got) == w
        return isinstance(got, str) and normalize_text(got) == normalize_text(want)
    return got == want


def ast_match(got: dict | None, want: dict) -> bool:
    """BFCL-style call match: the same action (exactly), the same set of keys, every argument value matching."""
    if not isinstance(got, dict) or got.get("action") != want.get("action") or set(got) != set(want):
        return False
    return all(values_match(got[k], want[k]) for k in want if k != "action")
