"""The Arabic function-calling dataset v2: determinism, sizes, typed arguments, an honest split, and the defect
classes of v1 impossible by construction (issue #16)."""

import json
import re
from collections import Counter, defaultdict

import pytest

from harness import dataset_templates as T
from harness.dataset import (ACTIONS, FUNCTIONS, OPEN_KINDS, POOLS, TEST_COMBOS_PER_DIALECT, build, card, generate,
                             is_test_date, is_test_int, is_test_time, leaks, overlap_checks, parse_call, part_of_day)

ARABIC_DIGITS = "٠١٢٣٤٥٦٧٨٩"


def requests(examples):
    """(function, dialect, combination, request text, answer JSON, skeleton) per request."""
    for ex in examples:
        users = [m["content"] for m in ex.messages if m["role"] == "user"]
        yield from zip(ex.functions, ex.dialects, ex.templates, users, ex.answers, ex.skeletons)


def test_same_seed_gives_the_same_dataset():
    """Two generations with seed 0 are identical; seed 1 differs (in its held-out combinations too). generate() serves
    a per-process cache, so `b` is built afresh (build): `a` is the cache's, made by an earlier, separate build."""
    a, b, c = generate(0), build(0), generate(1)
    for split in a:
        assert [e.to_dict() for e in a[split]] == [e.to_dict() for e in b[split]]
    assert [e.to_dict() for e in a["train"]] != [e.to_dict() for e in c["train"]]
    assert {e.templates[-1] for e in a["test"]} != {e.templates[-1] for e in c["test"]}


def test_a_caller_cannot_change_what_generate_gives_the_next_caller():
    """generate() hands out fresh lists of fresh Examples from its cache: editing one (a list, a message, a value, the
    split's list itself) leaves what the next generate(0) returns as it was."""
    mine = generate(0)
    ex = mine["test"][0]
    before = json.dumps(ex.to_dict(), ensure_ascii=False)
    ex.messages[-1]["content"] = "{}"
    ex.messages[0]["content"] = ""
    ex.messages.append({"role": "user", "content": "x"})
    ex.skeletons[-1] += " كلمةجديدة"
    ex.templates.clear()
    ex.template_seen[-1] = True
    for values in ex.values:
        values["planted"] = 1
    trained = len(mine["train"])
    mine["train"].clear()
    again = generate(0)
    assert json.dumps(again["test"][0].to_dict(), ensure_ascii=False) == before
    assert len(again["train"]) == trained and again["test"][1].messages[0]["content"] == again["test"][0].messages[0]["content"]


def test_split_sizes_and_stratification(dataset):
    """Train 10-20k (under one epoch of the recipe's 600 × 8 rows), test ≥ 2,000 items over ≥ 15 held-out
    combinations per function (4 per dialect, 10 items each), a dev split of its own combinations."""
    facts = card(dataset)["splits"]
    assert 10_000 <= facts["train"]["conversations"] <= 20_000
    assert facts["test"]["conversations"] >= 2000
    last = Counter((ex.functions[-1], ex.dialects[-1]) for ex in dataset["test"])
    assert set(last) == {(f, d) for f in ACTIONS for d in T.DIALECTS}
    per_combo = Counter(ex.templates[-1] for ex in dataset["test"])
    per_function = Counter(c.split("|")[0] for c in per_combo)
    assert min(per_function.values()) >= 15 and set(per_function) == set(ACTIONS)
    assert set(per_combo.values()) == {10}
    assert all(n == 10 * TEST_COMBOS_PER_DIALECT for n in last.values())
    assert set(facts["train"]["dialects"]) == {"msa", "egy", "gulf", "lev"}
    assert facts["train"]["multi_turn"] > 500


def test_any_prefix_of_the_test_is_stratified(dataset):
    """The test is ordered in rounds: its first 224 items are 224 different combinations (16 per function), so a
    shorter evaluation (eval_limit) is still balanced."""
    n = len({ex.templates[-1] for ex in dataset["test"]})
    first = [ex.templates[-1] for ex in dataset["test"][:n]]
    assert len(set(first)) == n == 16 * len(ACTIONS)


def test_the_lexicon_is_rich_enough():
    """≥ 8 frames per dialect per function, ≥ 5 object synonyms (some English), carriers shared by all functions,
    2-3 slot orders, ≥ 300 distinct 'none' requests in training and ≥ 500 distinct combinations per function."""
    facts = card(generate(0, {"validation": 0, "test": 0, "diagnostic": 0, "stress": 0}))
    for function, by_dialect in facts["lexicon"]["frames_per_dialect"].items():
        assert min(by_dialect.values()) >= 8, function
    assert all(n >= 5 for n in facts["lexicon"]["objects"].values())
    assert all(any(re.fullmatch(r"[A-Za-z ]+", o) for o in objects) for objects in T.OBJECTS.values())
    assert all(2 <= n <= 3 for n in facts["lexicon"]["slot_orders"].values())
    train = facts["splits"]["train"]
    assert train["distinct_requests"]["none"] >= 300
    assert min(n for f, n in train["distinct_combinations"].items() if f != "none") >= 500


def test_answers_are_json_calls_with_english_keys_and_ascii_digits(dataset):
    """Every model turn parses to {"action": ...} with the function's declared keys, in order, ASCII digits only."""
    for split in ("train", "test", "stress"):
        for fn, _, _, _, answer, _ in requests(dataset[split]):
            call = parse_call(answer)
            assert call is not None and call["action"] == fn
            assert list(call)[1:] == [s.name for s in FUNCTIONS.get(fn, [])]
            assert not any(ch in answer for ch in ARABIC_DIGITS)


def test_arabic_indic_digits_in_requests_are_normalized(dataset):
    """A request written with Arabic-Indic digits has the same number in ASCII in its JSON."""
    alarms = [(text, json.loads(answer)) for fn, _, _, text, answer, _ in requests(dataset["train"])
              if fn == "set_alarm" and any(ch in text for ch in ARABIC_DIGITS)]
    assert len(alarms) > 100
    for request, call in alarms:
        hour, minute = call["time"].split(":")
        assert f"{int(hour)}:{minute}".translate(str.maketrans("0123456789", ARABIC_DIGITS)) in request


def test_the_split_is_honest(dataset):
    """Held-out combinations never occur in training, every one of their components does, held-out open values
    never occur in training, and every word of a test request outside its arguments occurs in training."""
    checks = card(dataset)["checks"]
    assert leaks(checks) == [], {name: checks.get(name.split(".")[0]) for name in leaks(checks)}


def test_the_overlap_check_sees_a_leak(dataset):
    """The check is not vacuous: a test request copied into training shows as a combination and values in train."""
    leaked = {**dataset, "train": dataset["train"] + dataset["test"][:1]}
    checks = overlap_checks(leaked)
    assert checks["test"]["combinations_in_train"] == 1 and checks["test"]["values_in_train"]
    assert {"test.combinations_in_train", "test.values_in_train"} <= set(leaks(checks))  # validation shares held-out values
    odd = dataset["test"][0]
    odd.skeletons[-1] += " كلمةجديدة"
    try:
        checks = overlap_checks(dataset)
        assert checks["test"]["words_unseen_in_train"] == ["كلمةجديدة"]
        assert leaks(checks) == ["test.words_unseen_in_train"]
    finally:
        odd.skeletons[-1] = odd.skeletons[-1].removesuffix(" كلمةجديدة")
    crossed = {**dataset, "test": dataset["test"] + dataset["validation"][:1]}
    assert "validation_combinations_in_test" in leaks(overlap_checks(crossed))


def test_the_stress_tier_has_an_unseen_component_in_every_request(dataset):
    """Each stress request has an object or a carrier that training never shows (reported apart from the test)."""
    train_words = set().union(*(set(s.split()) for *_, s in requests(dataset["train"])))
    stress_objects = {o for objects in T.STRESS_OBJECTS.values() for o in objects}
    stress_carriers = {cid for cid, _, _ in T.STRESS_CARRIERS}
    for fn, _, combo, text, _, _ in requests(dataset["stress"]):
        _, _, _, obj, carrier, _ = combo.split("|")
        assert obj in stress_objects or carrier in stress_carriers, text
    assert not stress_objects & {o for objects in T.OBJECTS.values() for o in objects}
    assert any(w not in train_words for w in "على السريع اعمل معروف رجاءً".split())


def test_the_diagnostic_cells_cover_the_other_three_quarters(dataset):
    """Seen/unseen combination × seen/unseen values: the diagnostic split holds the three cells besides the test's."""
    def cells(split):  # requests with open values (set_lights and play_music have enum values only: always seen)
        return Counter((ex.template_seen[-1], ex.values_seen[-1]) for ex in dataset[split] if ex.values[-1])

    diagnostic = cells("diagnostic")
    assert set(diagnostic) == {(True, True), (True, False), (False, True)} and min(diagnostic.values()) >= 60
    assert set(cells("test")) == {(False, False)}


# --- v1's defect classes, impossible by construction --------------------------------------------------------------
def _verb_forms(state):
    return {form for by_dialect in [T.VERBS[f"set_lights:{state}"]] for verbs in by_dialect.values() for triple in verbs
            for form in triple}


def test_on_and_off_words_always_match_the_state(dataset):
    """v1: set_lights' only Gulf training template meant 'off' and every test item said 'on'. Now each request carries
    a verb of its own state and none of the other state's verbs."""
    on, off = _verb_forms("on"), _verb_forms("off")
    assert not on & off
    seen = Counter()
    for split in ("train", "test", "validation", "stress"):
        for fn, dialect, _, text, answer, _ in requests(dataset[split]):
            if fn != "set_lights":
                continue
            state = json.loads(answer)["state"]
            words = set(text.split())
            own, other = (on, off) if state == "on" else (off, on)
            assert words & own and not words & other, text
            seen[(dialect, state)] += 1
    assert all(seen[(d, s)] > 0 for d in T.DIALECTS for s in ("on", "off"))


def test_part_of_day_words_match_the_hour(dataset):
    """v1: 'قوّمني الساعة {time} الصبح' (morning) was filled with times up to 22:40. Now a part-of-day word only
    follows an hour it describes."""
    words_to_hours = {w: set(hours) for hours, ws in T.PARTS_OF_DAY for w in ws}
    checked = 0
    for split in ("train", "test"):
        for fn, _, _, text, answer, _ in requests(dataset[split]):
            call = json.loads(answer)
            if "time" not in call:
                continue
            for word, hours in words_to_hours.items():
                if re.search(rf"\d {word}(\s|$|[؟:»])", text.translate(str.maketrans(ARABIC_DIGITS, "0123456789"))):
                    assert int(call["time"][:2]) in hours, text
                    checked += 1
    assert checked > 500
    assert part_of_day(22) == ["بالليل", "مساءً"] and part_of_day(3) == []


def test_every_frame_word_of_the_test_is_taught_in_training(dataset):
    """v1: navigate's held-out 'أبي أروح' shared no word with training and أبي appeared nowhere in it. Now every frame
    exists for every function, and the words of every held-out request's skeleton occur in training (see
    test_the_split_is_honest); the Gulf 'want' word occurs with every function in training."""
    by_function = defaultdict(set)
    for fn, dialect, _, text, _, _ in requests(dataset["train"]):
        if dialect == "gulf" and text.split()[:2].count("أبي") + text.split()[:3].count("أبي"):
            by_function[fn].add(text)
    assert set(by_function) >= set(FUNCTIONS)


def test_a_trailing_carrier_never_follows_a_free_text(dataset):
    """A politeness word after a message or a reminder would make the text's end ambiguous: a combination whose slot
    order ends with a free text only takes carriers in front of the request."""
    from harness.dataset import _text_last

    trailing = {cid for cid, p, _ in T.CARRIERS + T.STRESS_CARRIERS if p.startswith("{} ")}
    text_last = 0
    for split in ("train", "test", "stress"):
        for fn, _, combo, text, _, _ in requests(dataset[split]):
            *_, carrier, order = combo.split("|")
            if fn != "none" and _text_last(fn, int(order)):
                text_last += 1
                assert carrier not in trailing, text
    assert text_last > 1000


def test_open_value_split_rules_partition_their_domains():
    """The rules that hold values out cover both sides of every open kind; the pools are disjoint and large."""
    assert {is_test_int(v) for v in range(100)} == {True, False}
    assert {is_test_time(h, m) for h in range(24) for m in range(0, 60, 5)} == {True, False}
    assert {is_test_date(d) for d in range(1, 29)} == {True, False}
    assert set(OPEN_KINDS) >= {"person", "city", "text"}
    for name, (train, test) in POOLS.items():
        assert not set(train) & set(test), name
        assert len(train) >= 60 and len(test) >= 15, name
    assert any(" " in c for c in POOLS["city"][1]) and any(not c.startswith("ال") for c in POOLS["city"][1])


def test_the_card_command_prints_the_checks_and_exits_0(capsys):
    """`python -m harness dataset --card` prints sizes and the overlap checks; exit 0 when nothing leaks."""
    from harness.cli import main

    assert main(["dataset", "--card"]) == 0
    out = capsys.readouterr().out
    assert "| test | 2,240 |" in out and "request words unseen in training: 0" in out


def test_the_card_command_exits_1_on_a_leak(monkeypatch, capsys):
    """The command judges the split with harness.dataset.leaks: a planted leak gives exit 1 and names the check."""
    from harness import dataset as ds
    from harness.cli import main

    real = ds.overlap_checks
    monkeypatch.setattr(ds, "overlap_checks", lambda data: {**real(data), "validation_combinations_in_test": 2})
    assert main(["dataset", "--card"]) == 1
    assert "validation_combinations_in_test" in capsys.readouterr().err


def test_held_out_values_are_nested_in_test_combinations(dataset, monkeypatch):
    """Each test combination draws its held-out values from heads (first words) of its own: a held-out value acts as one
    cluster (a city right in all its items or none, measured), so it must fall in one combination. Planted: drawing
    from the whole held-out pool again (v2 before nesting) shares heads between combinations, and the check sees it."""
    checks = overlap_checks(dataset)["test"]
    assert checks["value_heads"] >= 200 and checks["value_heads_shared"] == []
    import harness.dataset as ds

    monkeypatch.setattr(ds, "nested_value_slices", lambda combos, seed: {})
    # build(), not generate(): the un-nested dataset must not stay in generate()'s cache.
    shared = overlap_checks(ds.build(seed=0, sizes={"train": 10, "validation": 10, "diagnostic": 3, "stress": 3}))
    assert len(shared["test"]["value_heads_shared"]) > 50 and "test.value_heads_shared" in leaks(shared)


def test_nesting_needs_a_head_per_combination():
    import harness.dataset as ds

    combos = ds.held_out_combos(0)["test"]
    many = [c for c in combos if c.function == "get_weather"] * 5  # 80 users of the city pool: more than its 64 heads
    with pytest.raises(ValueError, match="heads for 80 test combinations"):
        ds.nested_value_slices(many, 0)
