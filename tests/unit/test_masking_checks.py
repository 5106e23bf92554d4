"""§3's checks can come out `fail`, and the measuring helpers count what they claim to, on hand-made inputs."""

import pytest
import torch

import spec
from harness.masking import IGNORE, agreement_facts, fed_batch_facts, merged_model_turns, user_turn_facts
from spec.core import evaluate

BOS, START, END, NL, NLNL, MODEL, USER = 2, 105, 106, 107, 108, 4368, 2364


class FakeTokenizer:
    """Conversations are given as their template ids and assistant masks (messages = {"ids", "mask"})."""

    def encode(self, text, add_special_tokens=False):
        return {"<start_of_turn>user\n": [START, USER, NL], "<start_of_turn>model\n": [START, MODEL, NL]}[text]

    def convert_tokens_to_ids(self, token):
        return {"<start_of_turn>": START, "<end_of_turn>": END}[token]

    def apply_chat_template(self, messages, return_assistant_tokens_mask=False, return_dict=True):
        return {"input_ids": messages["ids"], "assistant_masks": messages["mask"]}


TOK = FakeTokenizer()
# <bos> user turn (content 7), model turn (content 9): the model content, <end_of_turn> and "\n" train.
IDS = [BOS, START, USER, NL, 7, END, NL, START, MODEL, NL, 9, END, NL]
MASK = [0] * 10 + [1, 1, 1]
CONVERSATION = {"ids": IDS, "mask": MASK}
LABELS = [t if m else IGNORE for t, m in zip(IDS, MASK)]


def test_a_leading_newline_model_turn_is_located_from_the_ids():
    merged = [BOS, START, USER, NL, 7, END, NL, START, MODEL, NLNL, 9, END, NL]
    assert merged_model_turns(TOK, merged) == {9, 10, 11, 12}
    assert merged_model_turns(TOK, IDS) == set()


def test_agreement_classes_and_verdicts():
    merged = {"ids": [BOS, START, USER, NL, 7, END, NL, START, MODEL, NLNL, 9, END, NL], "mask": [0] * 9 + [1] * 4}
    trl_rows = {0: (IDS, LABELS), 1: (merged["ids"], [IGNORE] * 9 + merged["ids"][9:])}
    unsloth = {"unsloth_zoo": lambda ids: LABELS if ids == IDS else [IGNORE] * len(ids)}
    facts = agreement_facts(TOK, [(CONVERSATION, None), (merged, None)], trl_rows, unsloth)
    assert (facts["disagreements_leading_newline"], facts["disagreements_other"]) == (1, 0)
    assert facts["tokens_trained_by_trl_only"] == 4 and facts["tokens_trained_by_unsloth_only"] == 0
    assert evaluate(spec.CLAIMS["MASK-AGREEMENT"], {**facts, "cases": 100}, "cpu").verdict == "corrected"
    wrong_eot = {"unsloth_zoo": lambda ids: [IGNORE if t == END else label for t, label in zip(ids, LABELS)]}
    facts = agreement_facts(TOK, [(CONVERSATION, None)], {0: (IDS, LABELS)}, wrong_eot)
    assert facts["disagreements_other"] == 1
    assert evaluate(spec.CLAIMS["MASK-AGREEMENT"], facts, "cpu").verdict == "fail"


def test_a_row_the_masker_changed_is_counted_not_dropped():
    facts = user_turn_facts(TOK, [CONVERSATION, CONVERSATION], [(IDS, LABELS), (IDS[:-1], LABELS[:-1])], "fake")
    assert (facts["conversations"], facts["ids_differ"]) == (1, 1)
    outcome = evaluate(spec.CLAIMS["MASK-USER-TURNS"], {**facts, "conversations": 20}, "cpu/unsloth_zoo")
    assert outcome.verdict == "fail" and outcome.regression


@pytest.mark.parametrize("change, counted", [
    (lambda ids, labels, attention: ids.masked_fill_(labels == IGNORE, IGNORE), "ids_equal_minus_100"),
    (lambda ids, labels, attention: ids[1].copy_(torch.roll(ids[1], 1)), "input_ids_changed"),
    (lambda ids, labels, attention: labels[0].copy_(ids[0]), "masked_positions_trained"),
])
def test_fed_batches_count_ids_and_labels_that_moved(change, counted):
    short = {"ids": IDS[:-1], "mask": MASK[:-1]}
    ids = torch.tensor([IDS, IDS[:-1] + [0]])
    labels = torch.tensor([LABELS, LABELS[:-1] + [IGNORE]])
    attention = torch.tensor([[1] * 13, [1] * 12 + [0]])
    clean = fed_batch_facts(TOK, [CONVERSATION, short], [{"input_ids": ids, "labels": labels, "attention_mask": attention}], None)
    assert clean[counted] == 0 and clean["template_rows_not_fed"] == 0
    assert evaluate(spec.CLAIMS["MASK-LABELS-NOT-IDS"], {**clean, "rows": 60}, "cpu/unsloth_zoo").verdict == "corrected"
    change(ids, labels, attention)
    facts = fed_batch_facts(TOK, [CONVERSATION, short], [{"input_ids": ids, "labels": labels, "attention_mask": attention}], None)
    assert facts[counted] > 0
    assert evaluate(spec.CLAIMS["MASK-LABELS-NOT-IDS"], {**facts, "rows": 60}, "cpu/unsloth_zoo").verdict == "fail"


def test_the_loss_check_fails_on_a_wrong_token_count_or_a_vacuous_perturbation():
    good = {"loss_vs_manual": 7.6e-8, "num_items_in_batch": 66, "unmasked": 66, "masked_perturbation_loss_delta": 0.0,
            "masked_perturbation_grad_delta": 0.0, "masked_position_grad_max": 0.0,
            "unmasked_perturbation_loss_delta": 0.07, "unmasked_labels_loss_delta": 0.002}
    assert evaluate(spec.CLAIMS["MASK-LOSS"], good, "tiny").verdict == "pass"
    for change in ({"num_items_in_batch": 722}, {"unmasked_labels_loss_delta": 0.0}, {"unmasked_perturbation_loss_delta": 0.0},
                   {"masked_position_grad_max": 1e-9}):
        assert evaluate(spec.CLAIMS["MASK-LOSS"], {**good, **change}, "tiny").verdict == "fail"
