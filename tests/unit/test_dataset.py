"""The Arabic function-calling dataset: determinism, sizes, typed arguments, and leak-free splits."""

import json

from harness import dataset_templates as T
from harness.dataset import FUNCTIONS, OPEN_KINDS, card, generate, is_test_date, is_test_int, is_test_time, parse_call


def test_same_seed_gives_the_same_dataset():
    """Two generations with seed 0 are identical; seed 1 differs."""
    a, b, c = generate(0), generate(0), generate(1)
    assert [e.to_dict() for e in a["train"]] == [e.to_dict() for e in b["train"]]
    assert [e.to_dict() for e in a["train"]] != [e.to_dict() for e in c["train"]]


def test_sizes_functions_and_dialects(dataset):
    """≥3,000 training conversations, 13 functions plus none, three varieties of Arabic, some multi-turn."""
    facts = card(dataset)
    assert facts["train"]["conversations"] >= 3000
    assert set(facts["train"]["functions"]) == set(FUNCTIONS) | {"none"}
    assert set(facts["train"]["dialects"]) == {"msa", "egy", "gulf"}
    assert facts["train"]["multi_turn"] > 100


def test_answers_are_json_calls_with_english_keys_and_ascii_digits(dataset):
    """Every model turn parses to {"action": ...} with the function's declared keys, in order, ASCII digits only."""
    for ex in dataset["train"] + dataset["test"]:
        for fn, answer in zip(ex.functions, ex.answers):
            call = parse_call(answer)
            assert call is not None and call["action"] == fn
            assert list(call)[1:] == [s.name for s in FUNCTIONS.get(fn, [])]
            assert not any(ch in answer for ch in "٠١٢٣٤٥٦٧٨٩")


def test_arabic_indic_digits_in_requests_are_normalized():
    """A request written with Arabic-Indic digits has the same number in ASCII in its JSON."""
    data = generate(0)["train"]
    alarms = [(ex.messages[1]["content"], json.loads(ex.messages[2]["content"])) for ex in data
              if ex.functions[0] == "set_alarm" and any(ch in ex.messages[1]["content"] for ch in "٠١٢٣٤٥٦٧٨٩")]
    assert alarms
    for request, call in alarms:
        hour, minute = call["time"].split(":")
        assert f"{int(hour)}:{minute}".translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")) in request


def test_test_split_shares_no_template_and_no_open_value_with_train(dataset):
    """Test conversations use only held-out templates and held-out open values; train/validation never do."""
    def templates(split):
        return {t for ex in dataset[split] for t in ex.templates}

    def values(split):
        return {(k, json.dumps(v, ensure_ascii=False)) for ex in dataset[split] for vals in ex.values for k, v in vals.items()}

    for split in ("train", "validation"):
        assert templates(split).isdisjoint(templates("test"))
        assert values(split).isdisjoint(values("test"))
    held_out = {f"{n}#{i}" for n, ts in T.TEMPLATES.items() for i in range(len(ts) - T.HELD_OUT_TEMPLATES[n], len(ts))}
    assert templates("test") == held_out


def test_open_value_split_rules_partition_their_domains():
    """The rules that hold values out cover both sides of every open kind."""
    assert {is_test_int(v) for v in range(100)} == {True, False}
    assert {is_test_time(h, m) for h in range(24) for m in range(0, 60, 5)} == {True, False}
    assert {is_test_date(d) for d in range(1, 29)} == {True, False}
    assert set(OPEN_KINDS) >= {"person", "city", "text"}
