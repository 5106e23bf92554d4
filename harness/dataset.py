"""The Arabic function-calling dataset, generated deterministically from a seed.

Every example is a conversation: a developer turn declaring the functions, an Arabic user request,
and a model turn holding one JSON call with English keys (`{"action": "set_alarm", "time": "07:30"}`).
About one in ten has a second request and answer. Digits in requests are Arabic-Indic (٠-٩) half the
time; the JSON always has ASCII digits. The test split uses held-out phrasing templates *and*
held-out argument values, so exact match on it measures generalization, not recall.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from harness import dataset_templates as T

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 3200, "validation": 320, "test": 320}
MULTI_TURN_RATE = 0.1


@dataclass(frozen=True)
class Slot:
    """One argument: its JSON key, its kind and where its values come from."""

    name: str
    kind: str  # enum, int, time, date, person, city, text
    enum: dict[str, str] | None = None  # Arabic surface -> JSON value
    pool: tuple[list[str], list[str]] | None = None  # (train values, test values)
    low: int = 0
    high: int = 0


# The declared functions, in the order of the developer turn; JSON keys follow slot order.
FUNCTIONS: dict[str, list[Slot]] = {
    "set_lights": [Slot("room", "enum", T.ROOMS), Slot("state", "fixed")],
    "set_thermostat": [Slot("temperature", "int", low=16, high=30), Slot("mode", "enum", T.MODES)],
    "set_alarm": [Slot("time", "time")],
    "set_timer": [Slot("minutes", "int", low=1, high=120)],
    "get_weather": [Slot("city", "city", pool=T.CITIES), Slot("day", "enum", T.DAYS)],
    "send_message": [Slot("contact", "person", pool=T.PERSONS), Slot("message", "text", pool=T.MESSAGES)],
    "make_call": [Slot("contact", "person", pool=T.PERSONS)],
    "navigate": [Slot("destination", "city", pool=T.CITIES)],
    "create_event": [Slot("title", "text", pool=T.EVENTS), Slot("date", "date"), Slot("time", "time")],
    "play_music": [Slot("genre", "enum", T.GENRES)],
    "set_reminder": [Slot("text", "text", pool=T.REMINDERS), Slot("time", "time")],
    "convert_currency": [Slot("amount", "int", low=1, high=5000), Slot("from_currency", "enum", T.CURRENCIES),
                         Slot("to_currency", "enum", T.CURRENCIES)],
    "set_volume": [Slot("level", "int", low=0, high=100)],
}
OPEN_KINDS = ("int", "time", "date", "person", "city", "text")


def _signature(name: str, slots: list[Slot]) -> str:
    def describe(slot: Slot) -> str:
        if slot.kind == "fixed":
            return f"{slot.name}: on|off"
        if slot.kind == "enum":
            return f"{slot.name}: " + "|".join(dict.fromkeys(slot.enum.values()))
        return f"{slot.name}: " + {"int": "integer", "time": "HH:MM", "date": "YYYY-MM-DD"}.get(slot.kind, "string")

    return f"{name}(" + ", ".join(describe(s) for s in slots) + ")"


DEVELOPER_PROMPT = (
    "You are a function-calling assistant for Arabic requests. Answer with exactly one JSON object: "
    '{"action": <function name>, <argument>: <value>, ...}, or {"action": "none"} when no function fits. '
    "Keep names, cities and texts as the user wrote them; use ASCII digits.\nFunctions:\n"
    + "\n".join(_signature(name, slots) for name, slots in FUNCTIONS.items())
)


# Open-kind values are split by a fixed rule, so the split of a value never depends on the seed.
def is_test_int(value: int) -> bool:
    return value % 7 == 3


def is_test_time(hour: int, minute: int) -> bool:
    return (hour + minute // 5) % 6 == 0


def is_test_date(day: int) -> bool:
    return day % 8 == 0


@dataclass
class Example:
    id: str
    split: str
    messages: list[dict]
    functions: list[str]
    templates: list[str]
    dialects: list[str]
    values: list[dict] = field(default_factory=list)  # per request: slot -> JSON value (open kinds only)

    @property
    def answers(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    def to_dict(self) -> dict:
        return {"id": self.id, "split": self.split, "messages": self.messages, "functions": self.functions,
                "templates": self.templates, "dialects": self.dialects, "values": self.values}


def _digits(text: str, arabic: bool) -> str:
    return text.translate(ARABIC_INDIC) if arabic else text


def _draw(slot: Slot, rng: random.Random, test: bool, arabic: bool) -> tuple[str, object, bool]:
    """Draw a value for `slot`: (Arabic surface, JSON value, whether it is an open-kind value)."""
    if slot.kind == "enum":
        surface = rng.choice(sorted(slot.enum))
        return surface, slot.enum[surface], False
    if slot.kind == "int":
        candidates = [v for v in range(slot.low, slot.high + 1) if is_test_int(v) == test]
        value = rng.choice(candidates)
        return _digits(str(value), arabic), value, True
    if slot.kind == "time":
        while True:
            hour, minute = rng.randrange(24), rng.randrange(0, 60, 5)
            if is_test_time(hour, minute) == test:
                return _digits(f"{hour}:{minute:02d}", arabic), f"{hour:02d}:{minute:02d}", True
    if slot.kind == "date":
        while True:
            year, month, day = rng.choice((2026, 2027)), rng.randrange(1, 13), rng.randrange(1, 29)
            if is_test_date(day) == test:
                return _digits(f"{day}/{month}/{year}", arabic), f"{year:04d}-{month:02d}-{day:02d}", True
    value = rng.choice(slot.pool[1] if test else slot.pool[0])
    return value, value, True


def _templates_for(name: str, test: bool) -> list[tuple[str, tuple]]:
    templates = T.TEMPLATES[name]
    cut = len(templates) - T.HELD_OUT_TEMPLATES[name]
    chosen = templates[cut:] if test else templates[:cut]
    offset = cut if test else 0
    return [(f"{name}#{offset + i}", t) for i, t in enumerate(chosen)]


def _request(rng: random.Random, test: bool) -> tuple[str, str, str, str, dict, str]:
    """One user request and its answer: (function, template id, dialect, request, open values, answer JSON)."""
    name = rng.choice(list(T.TEMPLATES))
    template_id, (dialect, text, fixed) = rng.choice(_templates_for(name, test))
    arabic_digits = rng.random() < 0.5
    call: dict = {"action": name}
    open_values: dict = {}
    fills: dict = {}
    for slot in FUNCTIONS.get(name, []):
        if slot.kind == "fixed":
            call[slot.name] = fixed[slot.name]
            continue
        surface, value, is_open = _draw(slot, rng, test, arabic_digits)
        if slot.name == "to_currency":  # converting a currency into itself is no request
            while value == call["from_currency"]:
                surface, value, is_open = _draw(slot, rng, test, arabic_digits)
        fills[slot.name] = surface
        call[slot.name] = value
        if is_open:
            open_values[slot.name] = value
    answer = json.dumps(call, ensure_ascii=False)
    return name, template_id, dialect, text.format(**fills), open_values, answer


def generate(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[Example]]:
    """Generate all splits; the same seed and sizes give the same dataset, byte for byte."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out: dict[str, list[Example]] = {}
    for split in SPLITS:
        rng = random.Random(f"{seed}/{split}")
        test = split == "test"
        examples = []
        for index in range(sizes[split]):
            turns = 2 if rng.random() < MULTI_TURN_RATE else 1
            messages = [{"role": "system", "content": DEVELOPER_PROMPT}]
            example = Example(f"{split}-{index:05d}", split, messages, [], [], [])
            for _ in range(turns):
                name, template_id, dialect, request, values, answer = _request(rng, test)
                messages += [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
                example.functions.append(name)
                example.templates.append(template_id)
                example.dialects.append(dialect)
                example.values.append(values)
            examples.append(example)
        out[split] = examples
    return out


def parse_call(text: str) -> dict | None:
    """Parse a model answer into a JSON object, or None if it is not one."""
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def card(datasets: dict[str, list[Example]]) -> dict:
    """Facts about a generated dataset: sizes, functions, dialects, multi-turn share."""
    facts = {}
    for split, examples in datasets.items():
        functions: dict[str, int] = {}
        dialects: dict[str, int] = {}
        for ex in examples:
            for f in ex.functions:
                functions[f] = functions.get(f, 0) + 1
            for d in ex.dialects:
                dialects[d] = dialects.get(d, 0) + 1
        facts[split] = {
            "conversations": len(examples),
            "requests": sum(len(ex.functions) for ex in examples),
            "multi_turn": sum(len(ex.functions) > 1 for ex in examples),
            "functions": dict(sorted(functions.items())),
            "dialects": dict(sorted(dialects.items())),
        }
    return facts
