"""The Arabic function-calling dataset v2: compositional, deterministic from a seed, with an honest split.

Every example is a conversation: a developer turn declaring the functions, an Arabic user request and a model
turn holding one JSON call with English keys (`{"action": "set_alarm", "time": "07:30"}`). About one in ten has a
second request and answer. Digits in requests are Arabic-Indic (٠-٩) half the time; the JSON has ASCII digits.

A request is a *combination* (harness.dataset_templates): a dialect's frame filled with a verb of the function,
one of its objects, the arguments in one slot order, and a carrier. The splits:

- train: combinations that are not held out, training values;
- validation (dev): its own held-out combinations, held-out values (its loss measures generalization);
- test: held-out combinations whose every component occurs in training, held-out values; ~10 items per
  combination, 16 combinations per function (4 per dialect), ordered in rounds so that any prefix is stratified;
- diagnostic: the other three cells of seen/unseen combination × seen/unseen values (the test is the fourth);
- stress: an object or carrier never seen in training (reported apart, never in the headline).

What v1 measured and v2 answers (issue #16): one held-out template per function made the 320-item test behave
like ~14 clusters (SD 5.2 points between runs at one seed); here the test has 224 clusters.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass, field

from harness import dataset_templates as T

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
SPLITS = ("train", "validation", "test", "diagnostic", "stress")
DEFAULT_SIZES = {"train": 12000, "validation": 560, "test": 2240, "diagnostic": 336, "stress": 280}
MULTI_TURN_RATE = 0.1
TEST_COMBOS_PER_DIALECT, DEV_COMBOS_PER_DIALECT = 4, 2
BARE_CARRIER_RATE = 0.3  # a third of requests carry no politeness or adverb
PART_OF_DAY_RATE = 0.5


@dataclass(frozen=True)
class Slot:
    """One argument: its JSON key, its kind and where its values come from."""

    name: str
    kind: str  # fixed, enum, int, time, date, person, city, text
    enum: dict[str, str] | None = None  # Arabic surface -> JSON value
    pool: str = ""  # open pools: person, city, message, event, reminder
    low: int = 0
    high: int = 0


# The declared functions, in the order of the developer turn; JSON keys follow slot order.
FUNCTIONS: dict[str, list[Slot]] = {
    "set_lights": [Slot("room", "enum", T.ROOMS), Slot("state", "fixed")],
    "set_thermostat": [Slot("temperature", "int", low=16, high=30), Slot("mode", "enum", T.MODES)],
    "set_alarm": [Slot("time", "time")],
    "set_timer": [Slot("minutes", "int", low=1, high=120)],
    "get_weather": [Slot("city", "city", pool="city"), Slot("day", "enum", T.DAYS)],
    "send_message": [Slot("contact", "person", pool="person"), Slot("message", "text", pool="message")],
    "make_call": [Slot("contact", "person", pool="person")],
    "navigate": [Slot("destination", "city", pool="city")],
    "create_event": [Slot("title", "text", pool="event"), Slot("date", "date"), Slot("time", "time")],
    "play_music": [Slot("genre", "enum", T.GENRES)],
    "set_reminder": [Slot("text", "text", pool="reminder"), Slot("time", "time")],
    "convert_currency": [Slot("amount", "int", low=1, high=5000), Slot("from_currency", "enum", T.CURRENCIES),
                         Slot("to_currency", "enum", T.CURRENCIES)],
    "set_volume": [Slot("level", "int", low=0, high=100)],
}
OPEN_KINDS = ("int", "time", "date", "person", "city", "text")
ACTIONS = (*FUNCTIONS, "none")


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


# --- values: open kinds are split by fixed rules, so a value's split never depends on the seed ---------------
def is_test_int(value: int) -> bool:
    return value % 7 == 3


def is_test_time(hour: int, minute: int) -> bool:
    return (hour + minute // 5) % 6 == 0


def is_test_date(day: int) -> bool:
    return day % 8 == 0


def _compose(firsts, seconds):
    return [f"{a} {b}" for a in firsts for b in seconds]


POOLS: dict[str, tuple[list[str], list[str]]] = {
    # Test persons start with a held-out first name; family names are drawn from both lists.
    "person": (T.FIRST_NAMES[0] + _compose(T.FIRST_NAMES[0], T.FAMILY_NAMES[0]),
               T.FIRST_NAMES[1] + _compose(T.FIRST_NAMES[1], T.FAMILY_NAMES[0] + T.FAMILY_NAMES[1])),
    "city": T.CITIES,
    "message": (_compose(T.MESSAGE_HEADS[0], T.MESSAGE_TAILS[0]) + T.MESSAGE_HEADS[0],
                _compose(T.MESSAGE_HEADS[1], T.MESSAGE_TAILS[0] + T.MESSAGE_TAILS[1]) + T.MESSAGE_HEADS[1]),
    "event": (_compose(T.EVENT_KINDS[0], T.EVENT_OF[0]), _compose(T.EVENT_KINDS[1], T.EVENT_OF[0] + T.EVENT_OF[1])
              + _compose(T.EVENT_KINDS[0], T.EVENT_OF[1])),
    "reminder": (_compose(T.TODO_VERBS[0], T.TODO_OBJECTS[0]), _compose(T.TODO_VERBS[1], T.TODO_OBJECTS[0] + T.TODO_OBJECTS[1])
                 + _compose(T.TODO_VERBS[0], T.TODO_OBJECTS[1])),
}


def part_of_day(hour: int) -> list[str]:
    """The words that describe `hour` (24 h), or none (night hours 0-4 get no word)."""
    return next((words for hours, words in T.PARTS_OF_DAY if hour in hours), [])


# --- combinations ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Combo:
    """What the test holds out: frame (with its verb, and the state a set_lights verb carries) × object × carrier ×
    slot order, for one function and dialect."""

    function: str
    dialect: str
    frame: str  # "<frame name>/<verb index>" ("<frame name>/<state>/<verb index>" for set_lights; "u<k>" for none)
    obj: str  # the object's surface ("-" for none)
    carrier: str  # carrier id
    order: int  # index into ORDERS[function] (-1 for none)

    @property
    def id(self) -> str:
        return f"{self.function}|{self.dialect}|{self.frame}|{self.obj}|{self.carrier}|{self.order}"

    def components(self) -> list[tuple]:
        return [("frame", self.function, self.dialect, self.frame), ("object", self.function, self.obj),
                ("carrier", self.dialect, self.carrier), ("order", self.function, self.order)]


@functools.lru_cache(maxsize=None)
def _carriers(dialect: str, stress: bool = False) -> dict[str, str]:
    table = T.STRESS_CARRIERS if stress else T.CARRIERS
    return {cid: pattern for cid, pattern, dialects in table if dialects is None or dialect in dialects}


@functools.lru_cache(maxsize=None)
def _text_last(function: str, order: int) -> bool:
    """Whether the order ends with a free-text argument (then no carrier may follow it: its end would be ambiguous)."""
    if order < 0:
        return False
    last = re.findall(r"\{(\w+)\}", T.ORDERS[function][order])[-1]
    return any(s.name == last and s.kind == "text" for s in FUNCTIONS[function])


@functools.lru_cache(maxsize=None)
def _frames(function: str, dialect: str) -> tuple[str, ...]:
    if function == "none":
        return tuple(f"u{k}" for k in range(len(T.NONE_UTTERANCES[dialect])))
    out = []
    for name, pattern in T.FRAMES[dialect].items():
        if name.startswith("noun"):
            if function not in T.VERB_REQUIRED:
                out.append(f"{name}/-")
            continue
        if function == "set_lights":
            out += [f"{name}/{state}/{k}" for state in ("on", "off") for k in range(len(T.VERBS[f"set_lights:{state}"][dialect]))]
        else:
            out += [f"{name}/{k}" for k in range(len(T.VERBS[function][dialect]))]
    return tuple(out)


def draw_combo(rng: random.Random, function: str, dialect: str, *, stress_object: bool = False,
               stress_carrier: bool = False) -> Combo:
    """A combination drawn component by component (uniform frame, object, order; bare carrier at BARE_CARRIER_RATE)."""
    frame = rng.choice(_frames(function, dialect))
    if function == "none":
        obj, order = "-", -1
    else:
        obj = rng.choice(T.STRESS_OBJECTS[function] if stress_object else T.OBJECTS[function])
        order = rng.randrange(len(T.ORDERS[function]))
    carriers = _carriers(dialect, stress_carrier)
    if _text_last(function, order):  # only carriers in front of the request
        carriers = {c: p for c, p in carriers.items() if not p.startswith("{}") or p == "{}"}
    if not stress_carrier and rng.random() < BARE_CARRIER_RATE:
        carrier = "bare"
    else:
        carrier = rng.choice(sorted(c for c in carriers if c != "bare") or ["bare"])
    return Combo(function, dialect, frame, obj, carrier, order)


def held_out_combos(seed: int) -> dict[str, list[Combo]]:
    """Per split ("test", "validation"): the held-out combinations, TEST/DEV_COMBOS_PER_DIALECT per function and
    dialect, each with a different frame name where the function has enough (so a split never leans on one frame)."""
    rng = random.Random(f"{seed}/combinations")
    chosen: dict[str, list[Combo]] = {"test": [], "validation": []}
    taken: set[str] = set()
    for function in ACTIONS:
        for dialect in T.DIALECTS:
            names_used: set[str] = set()
            for split, count in (("test", TEST_COMBOS_PER_DIALECT), ("validation", DEV_COMBOS_PER_DIALECT)):
                got = 0
                while got < count:
                    combo = draw_combo(rng, function, dialect)
                    name = combo.frame.split("/")[0]
                    if combo.id in taken or (name in names_used and len(names_used) < 6):
                        continue
                    taken.add(combo.id)
                    names_used.add(name)
                    chosen[split].append(combo)
                    got += 1
    return chosen


# --- rendering ------------------------------------------------------------------------------------------------
def _digits(text: str, arabic: bool) -> str:
    return text.translate(ARABIC_INDIC) if arabic else text


@functools.lru_cache(maxsize=None)
def _int_candidates(low: int, high: int, test: bool) -> tuple[int, ...]:
    return tuple(v for v in range(low, high + 1) if is_test_int(v) == test)


def _draw(slot: Slot, rng: random.Random, test: bool, arabic: bool,
          pools: dict[str, list[str]] | None = None) -> tuple[str, object, bool]:
    """Draw a value for `slot`: (Arabic surface, JSON value, whether it is an open-kind value). `pools`: held-out values
    of a test combination's own (nested_value_slices), used for the open kinds it names."""
    if slot.kind == "enum":
        surface = rng.choice(sorted(slot.enum))
        return surface, slot.enum[surface], False
    if slot.kind == "int":
        value = rng.choice(_int_candidates(slot.low, slot.high, test))
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
    if test and pools and slot.pool in pools:
        value = rng.choice(pools[slot.pool])
    else:
        value = rng.choice(POOLS[slot.pool][1] if test else POOLS[slot.pool][0])
    return value, value, True


def render(combo: Combo, rng: random.Random, test_values: bool,
           pools: dict[str, list[str]] | None = None) -> tuple[str, dict, str, str]:
    """(request text, open values, answer JSON, skeleton) of one request of `combo`, with values drawn from the test or
    train pools (or, for a test combination, its own slice of the held-out pools: `pools`); the skeleton is the
    request with each argument's surface replaced by `{slot}`."""
    function, dialect = combo.function, combo.dialect
    if function == "none":
        text = _carry(combo, T.NONE_UTTERANCES[dialect][int(combo.frame[1:])])
        return text, {}, json.dumps({"action": "none"}), text
    parts = combo.frame.split("/")
    call: dict = {"action": function}
    if function == "set_lights":
        name, state, verb_index = parts
        verbs = T.VERBS[f"set_lights:{state}"][dialect][int(verb_index)]
    else:
        name, verb_index = parts
        verbs = T.VERBS[function][dialect][int(verb_index)] if verb_index != "-" else ("", "", "")
    arabic_digits = rng.random() < 0.5
    fills, open_values = {}, {}
    hour = None
    for slot in FUNCTIONS[function]:
        if slot.kind == "fixed":
            call[slot.name] = state
            continue
        surface, value, is_open = _draw(slot, rng, test_values, arabic_digits, pools)
        if slot.name == "to_currency":  # converting a currency into itself is no request
            while value == call["from_currency"]:
                surface, value, is_open = _draw(slot, rng, test_values, arabic_digits, pools)
        if slot.kind == "time":
            hour = int(value[:2])
        fills[slot.name] = surface
        call[slot.name] = value
        if is_open:
            open_values[slot.name] = value
    pod_words = part_of_day(hour) if hour is not None else []
    fills["pod"] = " " + rng.choice(pod_words) if pod_words and rng.random() < PART_OF_DAY_RATE else ""
    imp, you, i = verbs

    def compose(values: dict) -> str:
        rest = T.ORDERS[function][combo.order].format(**values)
        return _carry(combo, " ".join(T.FRAMES[dialect][name].format(imp=imp, you=you, i=i, obj=combo.obj, rest=rest).split()))

    skeleton = compose({k: (v if k == "pod" else "{" + k + "}") for k, v in fills.items()})
    return compose(fills), open_values, json.dumps(call, ensure_ascii=False), skeleton


def _carry(combo: Combo, text: str) -> str:
    pattern = {**_carriers(combo.dialect), **_carriers(combo.dialect, stress=True)}[combo.carrier]
    question = text.endswith("؟")
    carried = pattern.format(text[:-1] if question else text)
    return carried + ("؟" if question else "")


# --- examples and splits ----------------------------------------------------------------------------------------
@dataclass
class Example:
    id: str
    split: str
    messages: list[dict]
    functions: list[str]
    templates: list[str]  # per request: the combination id (the bootstrap's cluster)
    dialects: list[str]
    values: list[dict] = field(default_factory=list)  # per request: slot -> JSON value (open kinds only)
    template_seen: list[bool] = field(default_factory=list)  # per request: its combination occurs in training
    values_seen: list[bool] = field(default_factory=list)  # per request: its open values are training values
    skeletons: list[str] = field(default_factory=list)  # per request: the text with `{slot}` for each argument

    @property
    def answers(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    def to_dict(self) -> dict:
        return {"id": self.id, "split": self.split, "messages": self.messages, "functions": self.functions,
                "templates": self.templates, "dialects": self.dialects, "values": self.values,
                "template_seen": self.template_seen, "values_seen": self.values_seen, "skeletons": self.skeletons}

    def copy(self) -> "Example":
        """A copy that shares nothing mutable with this one (every list and dict is new; strings, ints and bools are
        immutable). generate() hands these out from its cache. Measured on the default dataset (15,416 examples, 2
        cores): 0.05 s for all of them, where copy.deepcopy took 0.27 s, as long as building it afresh (0.26 s)."""
        return Example(self.id, self.split, [dict(m) for m in self.messages], list(self.functions), list(self.templates),
                       list(self.dialects), [dict(v) for v in self.values], list(self.template_seen),
                       list(self.values_seen), list(self.skeletons))


def value_head(value: str) -> str:
    """A value's first word: what a held-out value's items share (a first name, a city, a message's opening)."""
    return value.split()[0]


def nested_value_slices(combos: list[Combo], seed: int) -> dict[str, dict[str, list[str]]]:
    """combination id -> open kind -> the held-out values it draws from: the held-out values grouped by head, the heads
    dealt out so that each combination using a kind gets heads (≥ 1, all dealt) no other combination gets.

    Why: a held-out value acts as one cluster (a city right in all its items or in none, and which ones fail changes
    between runs: reports/examples/h200x2-2026-11-28-bigpools). Nested in a combination, a head's items fall in one
    cluster of the bootstrap and of CHECK-OUTPUT's paired test, which then see the noise they must see."""
    rng = random.Random(f"{seed}/nested-values")
    slices: dict[str, dict[str, list[str]]] = {c.id: {} for c in combos}
    for pool, (_, held) in POOLS.items():
        users = [c for c in combos if any(slot.pool == pool for slot in FUNCTIONS.get(c.function, ()))]
        if not users:
            continue
        heads = sorted({value_head(v) for v in held})
        if len(heads) < len(users):
            raise ValueError(f"{len(heads)} held-out {pool} heads for {len(users)} test combinations: each needs its own")
        rng.shuffle(heads)
        for k, combo in enumerate(users):
            own = set(heads[k::len(users)])
            slices[combo.id][pool] = [v for v in held if value_head(v) in own]
    return slices


class _Builder:
    def __init__(self, seed: int):
        self.held = held_out_combos(seed)
        self.held_ids = {c.id for combos in self.held.values() for c in combos}
        self.test_slices = nested_value_slices(self.held["test"], seed)

    def train_combo(self, rng: random.Random, function: str | None = None) -> Combo:
        function = function or rng.choice(ACTIONS)
        dialect = rng.choice(T.DIALECTS)
        while True:
            combo = draw_combo(rng, function, dialect)
            if combo.id not in self.held_ids:
                return combo

    def example(self, split: str, index: int, rng: random.Random, requests: list[tuple[Combo, bool, bool]]) -> Example:
        """requests: (combo, test values?, combination seen in training?) per request, in order."""
        messages = [{"role": "system", "content": DEVELOPER_PROMPT}]
        ex = Example(f"{split}-{index:05d}", split, messages, [], [], [])
        for combo, test_values, seen in requests:
            pools = self.test_slices.get(combo.id) if split == "test" else None
            text, values, answer, skeleton = render(combo, rng, test_values, pools)
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
            ex.functions.append(combo.function)
            ex.templates.append(combo.id)
            ex.dialects.append(combo.dialect)
            ex.values.append(values)
            ex.template_seen.append(seen)
            ex.values_seen.append(not test_values or not values)
            ex.skeletons.append(skeleton)
        return ex


def _rounds(combos: list[Combo], size: int, rng: random.Random) -> list[Combo]:
    """`size` items over `combos` in rounds (each round visits every combination once, in a shuffled order), so that
    every prefix of the list is as balanced over combinations as it can be."""
    order = list(combos)
    out = []
    while len(out) < size:
        rng.shuffle(order)
        out += order[: size - len(out)]
    return out


def generate(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[Example]]:
    """All splits for `seed` and `sizes` (build()'s dataset), from a per-process cache: fresh lists of fresh Examples,
    so a caller that edits what it got (tests plant leaks in it) never changes what the next caller gets.

    Why a cache: build() is deterministic, and one `certify` (2026-11-28, cProfile) built 4 distinct datasets in 15
    calls: the session fixture, both fine-tunes, a claim test's trainer, the dataset card and its tests, and 6 times
    the tokenizer corpus' small one. A build of the default sizes takes ~0.3 s on 2 cores, a copy from here ~0.05 s."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    cached = _built(seed, tuple(sorted(sizes.items())))
    return {split: [ex.copy() for ex in examples] for split, examples in cached.items()}


@functools.lru_cache(maxsize=8)
def _built(seed: int, sizes: tuple[tuple[str, int], ...]) -> dict[str, tuple[Example, ...]]:
    """build()'s result, kept for generate() to copy from; never handed out itself."""
    return {split: tuple(examples) for split, examples in build(seed, dict(sizes)).items()}


def build(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[Example]]:
    """Generate all splits afresh (no cache); the same seed and sizes give the same dataset, byte for byte."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    b = _Builder(seed)
    out: dict[str, list[Example]] = {}
    for split in SPLITS:
        rng = random.Random(f"{seed}/{split}")
        examples: list[Example] = []
        if split == "train":
            for index in range(sizes[split]):
                turns = 2 if rng.random() < MULTI_TURN_RATE else 1
                examples.append(b.example(split, index, rng, [(b.train_combo(rng), False, True) for _ in range(turns)]))
        elif split in ("test", "validation"):
            held = b.held[split]
            for index, combo in enumerate(_rounds(held, sizes[split], rng)):
                before = [(rng.choice(held), True, False)] if rng.random() < MULTI_TURN_RATE else []
                examples.append(b.example(split, index, rng, before + [(combo, True, False)]))
        elif split == "diagnostic":  # the three cells besides the test's (unseen combination, unseen values)
            cells = [(True, False), (False, False), (False, True)]  # (test values?, held-out combination?)
            for index in range(sizes[split]):
                test_values, held_combo = cells[index % 3]
                function = ACTIONS[(index // 3) % len(ACTIONS)]
                combo = (rng.choice([c for c in b.held["test"] if c.function == function]) if held_combo
                         else b.train_combo(rng, function))
                examples.append(b.example(split, index, rng, [(combo, test_values, not held_combo)]))
        else:  # stress: an object or a carrier never seen in training, held-out values
            for index in range(sizes[split]):
                function = ACTIONS[index % len(ACTIONS)]
                unseen_object = function != "none" and index % 2 == 0
                while True:  # a trailing stress carrier cannot follow a free text: draw again
                    combo = draw_combo(rng, function, rng.choice(T.DIALECTS), stress_object=unseen_object,
                                       stress_carrier=not unseen_object)
                    if unseen_object or combo.carrier != "bare":
                        break
                examples.append(b.example(split, index, rng, [(combo, True, False)]))
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


# --- the dataset card and its checks ----------------------------------------------------------------------------
def _words(skeleton: str) -> set[str]:
    return set(re.sub(r"\{\w+\}", " ", skeleton).split())


def overlap_checks(datasets: dict[str, list[Example]]) -> dict:
    """What the split promises, measured: held-out combinations absent from training with every component present in
    it; held-out values absent from training; every word of a test request outside its arguments seen in training."""
    def requests(split):
        return [(c, v, s) for ex in datasets.get(split, []) for c, v, s in zip(ex.templates, ex.values, ex.skeletons)]

    train = requests("train")
    train_combos = {c for c, _, _ in train}
    train_components = {part for c, _, _ in train for part in _combo_from_id(c).components()}
    train_values = {(k, json.dumps(v, ensure_ascii=False)) for _, vals, _ in train for k, v in vals.items()}
    train_words = set().union(*(_words(s) for _, _, s in train)) if train else set()
    facts = {}
    for split in ("validation", "test"):
        rows = requests(split)
        combos = {c for c, _, _ in rows}
        facts[split] = {
            "combinations": len(combos),
            "combinations_in_train": len(combos & train_combos),
            "components_missing_from_train": sorted({str(p) for c in combos for p in _combo_from_id(c).components()
                                                     if p not in train_components}),
            "values_in_train": sorted({f"{k}={v}" for _, vals, _ in rows for k, v in vals.items()
                                       if (k, json.dumps(v, ensure_ascii=False)) in train_values}),
            "words_unseen_in_train": sorted(set().union(*(_words(s) for _, _, s in rows)) - train_words) if rows else [],
        }
    # The test's held-out values are nested in its combinations (nested_value_slices): no value head in two of them.
    heads: dict[str, set[str]] = {}
    for c, vals, _ in requests("test"):
        function = _combo_from_id(c).function
        for key, value in vals.items():
            pool = next((slot.pool for slot in FUNCTIONS.get(function, ()) if slot.name == key and slot.pool), None)
            if pool:
                heads.setdefault(f"{pool}:{value_head(value)}", set()).add(c)
    if "test" in facts:
        facts["test"]["value_heads"] = len(heads)
        facts["test"]["value_heads_shared"] = sorted(h for h, combos in heads.items() if len(combos) > 1)
    test_combos = {c for c, _, _ in requests("test")}
    facts["validation_combinations_in_test"] = len({c for c, _, _ in requests("validation")} & test_combos)
    return facts


# overlap_checks' entries per held-out split that must be empty (0 or []); a non-empty one is a leak.
SPLIT_CHECKS = ("combinations_in_train", "components_missing_from_train", "values_in_train", "words_unseen_in_train")


def leaks(checks: dict) -> list[str]:
    """The overlap checks (overlap_checks' dict) that leak, as "<split>.<check>" plus "validation_combinations_in_test":
    a held-out combination, value or component of training, a request word training never shows, or a validation
    combination inside the test. Empty when the split is honest. `python -m harness dataset` (exit 1) and
    tests/unit/test_dataset.py both judge the split with it."""
    found = [f"{split}.{name}" for split in ("validation", "test") for name in SPLIT_CHECKS if checks[split][name]]
    if checks["validation_combinations_in_test"]:
        found.append("validation_combinations_in_test")
    if checks["test"].get("value_heads_shared"):  # held-out values not nested in the test's combinations
        found.append("test.value_heads_shared")
    return found


def _combo_from_id(combo_id: str) -> Combo:
    function, dialect, frame, obj, carrier, order = combo_id.split("|")
    return Combo(function, dialect, frame, obj, carrier, int(order))


def card(datasets: dict[str, list[Example]]) -> dict:
    """Facts about a generated dataset: sizes, functions, dialects, multi-turn share, distinct combinations and
    requests per function, the lexicon's sizes, and the overlap checks."""
    facts: dict = {"splits": {}}
    for split, examples in datasets.items():
        functions: dict[str, int] = {}
        dialects: dict[str, int] = {}
        combos: dict[str, set] = {}
        texts: dict[str, set] = {}
        for ex in examples:
            for f, d, c, m in zip(ex.functions, ex.dialects, ex.templates, ex.messages[1::2]):
                functions[f] = functions.get(f, 0) + 1
                dialects[d] = dialects.get(d, 0) + 1
                combos.setdefault(f, set()).add(c)
                texts.setdefault(f, set()).add(m["content"])
        facts["splits"][split] = {
            "conversations": len(examples),
            "requests": sum(len(ex.functions) for ex in examples),
            "multi_turn": sum(len(ex.functions) > 1 for ex in examples),
            "functions": dict(sorted(functions.items())),
            "dialects": dict(sorted(dialects.items())),
            "distinct_combinations": {f: len(v) for f, v in sorted(combos.items())},
            "distinct_requests": {f: len(v) for f, v in sorted(texts.items())},
        }
    facts["lexicon"] = {
        "dialects": list(T.DIALECTS),
        "frames_per_dialect": {f: {d: len(_frames(f, d)) for d in T.DIALECTS} for f in ACTIONS},
        "frame_names_per_dialect": {d: len(T.FRAMES[d]) for d in T.DIALECTS},
        "objects": {f: len(v) for f, v in T.OBJECTS.items()},
        "carriers": len(T.CARRIERS), "slot_orders": {f: len(v) for f, v in T.ORDERS.items()},
        "none_utterances": sum(len(v) for v in T.NONE_UTTERANCES.values()),
        "value_pools": {k: {"train": len(v[0]), "test": len(v[1])} for k, v in POOLS.items()},
    }
    facts["checks"] = overlap_checks(datasets)
    return facts


def card_markdown(facts: dict) -> str:
    """The card as Markdown (the README embeds it: `python -m harness dataset --card`)."""
    splits, lex, checks = facts["splits"], facts["lexicon"], facts["checks"]
    lines = ["| split | conversations | requests | multi-turn | msa | egy | gulf | lev |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in splits.items():
        d = s["dialects"]
        lines.append(f"| {name} | {s['conversations']:,} | {s['requests']:,} | {s['multi_turn']:,} | "
                     + " | ".join(f"{d.get(x, 0):,}" for x in ("msa", "egy", "gulf", "lev")) + " |")
    train = splits.get("train", {})
    combos = train.get("distinct_combinations", {})
    frames = {f: min(v.values()) for f, v in lex["frames_per_dialect"].items()}
    lines += ["", f"- {len(lex['dialects'])} varieties; {lex['frame_names_per_dialect']['msa']} frame types per dialect; frames per "
              f"function and dialect (frame × verb × state) {min(frames.values())}-{max(frames.values())}; objects per function "
              f"{min(lex['objects'].values())}-{max(lex['objects'].values())}; {lex['carriers']} carriers; slot orders 2-3; "
              f"{lex['none_utterances']} 'none' utterances (with near misses).",
              f"- Distinct combinations in training per function: {min(combos.values()) if combos else 0}-"
              f"{max(combos.values()) if combos else 0} ('none': distinct requests {train.get('distinct_requests', {}).get('none', 0)}).",
              "- Open value pools (train / held-out): " + ", ".join(f"{k} {v['train']:,} / {v['test']:,}" for k, v in lex["value_pools"].items()) + "."]
    for split in ("validation", "test"):
        c = checks[split]
        lines.append(f"- {split}: {c['combinations']} held-out combinations; in training: {c['combinations_in_train']}; "
                     f"components missing from training: {len(c['components_missing_from_train'])}; held-out values in "
                     f"training: {len(c['values_in_train'])}; request words unseen in training: {len(c['words_unseen_in_train'])}"
                     + (f"; held-out values nested in combinations: {c['value_heads']} value heads (first words), "
                        f"shared by two combinations: {len(c['value_heads_shared'])}" if "value_heads" in c else "") + ".")
    return "\n".join(lines)
