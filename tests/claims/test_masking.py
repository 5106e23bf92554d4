"""Handbook §3 on the CPU: the real tokenizer, dataset conversations, Unsloth's own masking function,
TRL's assistant-only mask and this project's reference masker."""

import pytest
import torch
from hypothesis import given, strategies as st

from harness.masking import (IGNORE, UnslothUnavailable, marker_ids, marker_report, reference_masker,
                             trl_assistant_labels, unsloth_masker, user_turn_facts)
from harness.tokenizer import INSTRUCTION_PART, RESPONSE_PART


@pytest.fixture(scope="module")
def unsloth_fn(tokenizer):
    try:
        return unsloth_masker(tokenizer)
    except UnslothUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def conversations(dataset):
    """60 training conversations, a third of them multi-turn."""
    multi = [e.messages for e in dataset["train"] if len(e.functions) > 1][:20]
    single = [e.messages for e in dataset["train"] if len(e.functions) == 1][:40]
    return multi + single


@pytest.mark.claim("MASK-TOKENIZATION")
def test_markers_tokenize_the_same_alone_and_in_context(tokenizer, conversations, certify):
    """Both markers are 3 ids alone and in every conversation; a merging marker is reported."""
    found = 0
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
        found += not marker_report(tokenizer, text, list(ids))["merged"]
    planted = [{"role": "user", "content": "\nمرحبا"}, {"role": "assistant", "content": '{"action": "none"}'}]
    text = tokenizer.apply_chat_template(planted, tokenize=False)
    ids = tokenizer.apply_chat_template(planted, return_dict=True)["input_ids"]
    certify("MASK-TOKENIZATION", {
        "user_alone": marker_ids(tokenizer, INSTRUCTION_PART), "model_alone": marker_ids(tokenizer, RESPONSE_PART),
        "contexts": len(conversations), "contexts_found": found,
        "planted_merge_detected": marker_report(tokenizer, text, list(ids))["merged"],
        "planted": "a user turn starting with a newline: '\\n' + '\\n' tokenizes as one id (108)",
    }, "gemma3")


@pytest.mark.claim("MASK-USER-TURNS")
def test_unsloth_masks_everything_but_model_turns(tokenizer, conversations, unsloth_fn, certify):
    """Unsloth's train_on_responses_only: developer/user turns and markers -100, model turns trained with <end_of_turn>."""
    rows = []
    for messages in conversations:
        ids = list(tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"])
        rows.append((ids, unsloth_fn(ids)))
    certify("MASK-USER-TURNS", user_turn_facts(tokenizer, conversations, rows, "unsloth_zoo"), "cpu/unsloth_zoo")


@pytest.mark.claim("MASK-LABELS-NOT-IDS")
def test_masking_writes_labels_and_leaves_input_ids(tokenizer, conversations, unsloth_fn, certify):
    """After masking, input_ids are byte-identical and only labels hold -100."""
    from datasets import Dataset

    rows = [{"input_ids": tokenizer.apply_chat_template(m, return_dict=True)["input_ids"]} for m in conversations]
    before = Dataset.from_list(rows)
    after = before.map(lambda batch: {"labels": [unsloth_fn(ids) for ids in batch["input_ids"]]}, batched=True)
    changed = sum(a != b for a, b in zip(before["input_ids"], after["input_ids"]))
    certify("MASK-LABELS-NOT-IDS", {
        "input_ids_changed": changed,
        "ids_equal_minus_100": sum(t == IGNORE for ids in after["input_ids"] for t in ids),
        "labels_minus_100": sum(l == IGNORE for labels in after["labels"] for l in labels),
        "columns": after.column_names,
    }, "cpu/unsloth_zoo")


TEXT = st.text(alphabet=st.sampled_from(list("abcdeXYZ 0123456789{}\":,.؟") + list("مرحباكيفحالكالقاهرة") +
                                         ["😀", "🚀", "٣", "٧", "\n"]), min_size=1, max_size=30)
# Content never starts with whitespace: a leading newline merges with the marker (MASK-TOKENIZATION reports it).
CONTENT = TEXT.map(lambda s: "x" + s if s[0].isspace() else s)


@st.composite
def conversation(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(CONTENT)})
    for _ in range(draw(st.integers(1, 5))):
        messages.append({"role": "user", "content": draw(CONTENT)})
        messages.append({"role": "assistant", "content": draw(CONTENT)})
    truncate = draw(st.one_of(st.none(), st.integers(4, 120)))
    return messages, truncate


@pytest.mark.claim("MASK-AGREEMENT")
def test_three_maskers_agree_on_generated_conversations(tokenizer, conversations, unsloth_fn, certify):
    """Unsloth's masker, TRL's assistant mask and the reference masker give identical labels."""
    reference = reference_masker(tokenizer)
    seen = {"cases": 0, "disagreements": 0, "first_disagreement": None}

    def compare(messages, truncate):
        ids, trl = trl_assistant_labels(tokenizer, messages, truncate)
        results = {"trl": trl, "unsloth": unsloth_fn(ids), "reference": reference(ids)}
        seen["cases"] += 1
        if not (results["trl"] == results["unsloth"] == results["reference"]):
            seen["disagreements"] += 1
            seen["first_disagreement"] = seen["first_disagreement"] or {"messages": messages, "truncate": truncate}

    @given(conversation())
    def generated(case):
        compare(*case)

    generated()
    for messages in conversations:
        compare(messages, None)
    certify("MASK-AGREEMENT", {**seen, "implementations": ["unsloth_zoo", "trl assistant_only_loss", "reference"]}, "cpu")


@pytest.mark.claim("MASK-LOSS")
def test_masked_positions_never_reach_the_loss(tiny_dir, certify):
    """HF's causal-LM loss is the mean CE over unmasked positions; masked tokens/logits change nothing."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    vocab, length = model.config.vocab_size, 48
    labels = torch.randint(0, vocab, (1, length), generator=g)
    labels[0, :20] = IGNORE
    labels[0, 30:34] = IGNORE
    base_logits = torch.randn(1, length, vocab, generator=g)

    def loss_and_grad(logits, labels):
        logits = logits.clone().requires_grad_(True)
        loss = model.loss_function(logits=logits, labels=labels, vocab_size=vocab)
        loss.backward()
        return loss.detach(), logits.grad

    loss, grad = loss_and_grad(base_logits, labels)
    shifted = labels[0, 1:]
    keep = shifted != IGNORE
    manual = torch.nn.functional.cross_entropy(base_logits[0, :-1][keep], shifted[keep])
    masked_pos = (~keep).nonzero().view(-1)  # logits at these positions predict a masked label
    perturbed = base_logits.clone()
    perturbed[0, masked_pos] += 5 * torch.randn(len(masked_pos), vocab, generator=g)
    relabelled = labels.clone()
    relabelled[0, 1:][~keep] = IGNORE  # the masked targets stay ignored whatever token they were
    loss2, grad2 = loss_and_grad(perturbed, relabelled)
    live = keep.nonzero().view(-1)[:3]
    bumped = base_logits.clone()
    bumped[0, live] += 5 * torch.randn(len(live), vocab, generator=g)
    loss3, _ = loss_and_grad(bumped, labels)
    certify("MASK-LOSS", {
        "loss_vs_manual": float((loss - manual).abs() / manual.abs()),  # relative: float32 sums in another order
        "masked_perturbation_loss_delta": float((loss2 - loss).abs()),
        "masked_perturbation_grad_delta": float((grad2[0, :-1][keep] - grad[0, :-1][keep]).abs().max()),
        "masked_position_grad_max": float(grad2[0, masked_pos].abs().max()),
        "unmasked_perturbation_loss_delta": float((loss3 - loss).abs()),
        "positions": length - 1, "unmasked": int(keep.sum()),
    }, "tiny")
