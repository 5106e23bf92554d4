"""GGUF-HELDOUT (issue #15, blind spot 1): the deployed GGUF's held-out answers paired with the trained model's.

The check on the shapes of evidence the bug classes produce (a merge that drops the adapter: the GGUF is the base model;
a merge that costs accuracy; a faithful export), the pairing on planted outputs, and llama.cpp's answers split over
child processes coming back in the prompts' order."""

import json
from types import SimpleNamespace

import pytest

import spec
from spec.checklist import GGUF_HELDOUT_MAX_DROP
from spec.core import evaluate

CLAIM = spec.CLAIMS["GGUF-HELDOUT"]
CALL = '{"action": "set_lights", "room": "kitchen", "state": "on"}'
WRONG = '{"action": "set_lights", "room": "bedroom", "state": "on"}'


def _examples(n):
    return [SimpleNamespace(id=f"test-{i:05d}", split="test", functions=["set_lights"], dialects=["msa"],
                            templates=[f"combo-{i // 4}"], template_seen=[False], values_seen=[False],
                            messages=[{"role": "user", "content": f"request {i}"}, {"role": "assistant", "content": CALL}])
            for i in range(n)]


def _trained(examples, right):
    return {ex.id: {"id": ex.id, "request": f"request {i}", "expected": CALL, "output": CALL if right(i) else WRONG,
                    "exact": right(i)} for i, ex in enumerate(examples)}


def _compare(gguf_right, trained_right, n=200):
    from harness.gguf_heldout import compare

    examples = _examples(n)
    return compare(examples, [CALL if gguf_right(i) else WRONG for i in range(n)], _trained(examples, trained_right))


def test_a_faithful_export_passes():
    facts = _compare(lambda i: i % 10 != 0, lambda i: i % 10 != 0)
    assert facts["answer_agreement"] == 1.0 and facts["exact_match_drop"] == 0.0 and facts["paired"]["worse"] == 0
    outcome = evaluate(CLAIM, facts, "gpu")
    assert (outcome.verdict, outcome.violations, outcome.regression) == ("pass", [], False)


def test_a_merge_that_drops_the_adapter_fails():
    """The GGUF is the base model (unsloth #869, #1929, #2142): it answers nothing right where the trained model scored
    0.9."""
    facts = _compare(lambda i: False, lambda i: i % 10 != 0)
    assert facts["gguf_exact_match"] == 0.0 and facts["trained_exact_match"] == 0.9
    assert facts["paired"]["p_value"] < 0.001
    outcome = evaluate(CLAIM, facts, "gpu")
    assert outcome.verdict == "fail" and outcome.regression


def test_an_export_that_loses_a_tenth_is_not_the_handbooks_model():
    """A merge that keeps the adapter but costs ten points (e.g. a quantization term folded in): past the tolerance,
    read as corrected, which the recorded `pass` makes a regression."""
    facts = _compare(lambda i: i % 5 != 0, lambda i: i % 10 != 0)  # 0.8 vs 0.9, every loss in a different item
    assert facts["exact_match_drop"] == pytest.approx(0.1)
    assert facts["exact_match_drop_ci95"][1] > GGUF_HELDOUT_MAX_DROP
    outcome = evaluate(CLAIM, facts, "gpu")
    assert outcome.verdict == "corrected" and outcome.regression


def test_a_trained_answer_the_gguf_never_gave_is_unmatched():
    from harness.gguf_heldout import compare

    examples = _examples(8)
    facts = compare(examples[:7], [CALL] * 7, _trained(examples, lambda i: True))
    assert facts["unmatched"] == 1 and evaluate(CLAIM, facts, "gpu").regression


def test_nothing_paired_is_a_failure_not_a_pass():
    from harness.gguf_heldout import compare

    examples = _examples(8)
    facts = compare(examples, [CALL] * 8, {})
    assert facts["prompts"] == 0
    assert evaluate(CLAIM, facts, "gpu").verdict == "fail"


def test_trained_rows_read_the_stored_outputs(tmp_path):
    from harness.evaluate import output_rows, write_outputs
    from harness.gguf_heldout import trained_rows

    examples = _examples(3)
    write_outputs(tmp_path / "outputs-test.jsonl", output_rows(examples, [CALL, WRONG, CALL]))
    rows = trained_rows(tmp_path / "outputs-test.jsonl")
    assert [rows[ex.id]["exact"] for ex in examples] == [True, False, True]
    assert json.loads(rows["test-00001"]["output"])["room"] == "bedroom"


def test_answers_from_several_llama_children_come_back_in_order(llama_cpp_reader, tiny_gguf, tokenizer, dataset):
    """Prompts are dealt to the children round-robin; each answer must land at its prompt's index, and a child that
    reuses the previous prompt's KV cache (a different previous prompt with 2 children) answers the same."""
    from harness.evaluate import prompt_ids
    from harness.gguf_heldout import llama_answers

    ids = prompt_ids(tokenizer, [ex.messages[:-1] for ex in dataset["test"][:4]])
    stop = {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    one = llama_answers(tiny_gguf, ids, stop, max_new_tokens=4, workers=1)
    assert len(one) == 4 and all(len(a) <= 4 for a in one) and len({tuple(a) for a in one}) > 1
    assert llama_answers(tiny_gguf, ids, stop, max_new_tokens=4, workers=2) == one


def test_answers_of_uneven_shards_come_back_in_order(monkeypatch, tmp_path):
    """7 prompts over 3 children (3, 2 and 2 prompts): each child echoes its prompts as answers, which must come back
    at their prompts' indices."""
    import sys

    from harness import gguf_verify
    from harness.gguf_heldout import llama_answers

    echo = "import json, sys; job = json.load(sys.stdin); print(json.dumps({'greedy': job['prompt_ids']}))"
    monkeypatch.setattr(gguf_verify, "_child_command", lambda: [sys.executable, "-I", "-c", echo])
    ids = [[i, i] for i in range(7)]
    assert llama_answers(tmp_path / "x.gguf", ids, set(), 4, workers=3) == ids
