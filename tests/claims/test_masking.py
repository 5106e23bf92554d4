"""Handbook §3 on the CPU: the real tokenizer, dataset conversations, the handbook's trainer (TRL's SFTTrainer and
Unsloth's train_on_responses_only from unsloth_zoo, on the tiny model), TRL's own assistant-only preparation and
this project's reference masker."""

import pytest
from hypothesis import given, strategies as st

from harness.masking import (UnslothUnavailable, agreement_facts, chat_template_labels, fed_batch_facts,
                             handbook_trainer, marker_ids, marker_report, reference_masker, trainer_loss_facts,
                             trl_assistant_only_trainer, trl_truncated, unsloth_masker, user_turn_facts)
from harness.recipe import HANDBOOK
from harness.tokenizer import INSTRUCTION_PART, RESPONSE_PART

# The handbook trainer's max_length: 25 of the 60 conversations (306-402 tokens; the first trained token at 297-321)
# are longer and get truncated by the trainer, none loses its first model turn (measured).
TRAINER_MAX_LENGTH = 340


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


@pytest.fixture(scope="module")
def trainer(tiny_dir, tokenizer, conversations, unsloth_fn, tmp_path_factory):
    """The handbook's trainer on the tiny model: SFTTrainer + Unsloth's train_on_responses_only (unsloth_zoo)."""
    from datasets import disable_progress_bars

    disable_progress_bars()
    return handbook_trainer(tiny_dir, tokenizer, conversations, HANDBOOK.with_(max_seq_length=TRAINER_MAX_LENGTH),
                            tmp_path_factory.mktemp("handbook-trainer"))


@pytest.fixture(scope="module")
def hf_trainer(tiny_dir, tokenizer, conversations, tmp_path_factory):
    """The hf backend's CPU trainer on the tiny model (reference-masked rows; no unsloth_zoo needed): the loss that
    trains on a CPU."""
    from datasets import disable_progress_bars

    from harness.backends.sft import sft_kwargs, tokenize_conversations
    from harness.train_hf import build_sft_trainer

    disable_progress_bars()
    out = tmp_path_factory.mktemp("hf-trainer")
    rows = tokenize_conversations(tokenizer, conversations, reference_masker(tokenizer), HANDBOOK.max_seq_length)
    return build_sft_trainer(tiny_dir, HANDBOOK, out, train_rows=rows, tokenizer=tokenizer,
                             sft_args=sft_kwargs(HANDBOOK, out, on_gpu=False))


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


@pytest.mark.claim("MASK-USER-TURNS")
def test_the_handbook_trainer_holds_model_turn_labels_only(tokenizer, conversations, trainer, certify):
    """The rows the handbook's trainer holds after Unsloth's masking (truncated by the trainer), against the template."""
    rows = trainer.train_dataset
    certify("MASK-USER-TURNS", user_turn_facts(tokenizer, conversations, list(zip(rows["input_ids"], rows["labels"])),
                                               "unsloth_zoo on the handbook trainer", trainer.args.max_length), "tiny")


@pytest.mark.claim("MASK-LABELS-NOT-IDS")
def test_the_trainer_is_fed_the_template_ids_and_masked_labels(tokenizer, conversations, trainer, certify):
    """Every batch the trainer's own dataloader yields: input_ids are the template's, -100 only in the labels."""
    batches = list(trainer.get_train_dataloader())
    certify("MASK-LABELS-NOT-IDS", {
        **fed_batch_facts(tokenizer, conversations, batches, trainer.args.max_length),
        "collator": type(trainer.data_collator).__name__, "max_length": trainer.args.max_length,
    }, "cpu/unsloth_zoo")


TEXT = st.text(alphabet=st.sampled_from(list("abcdeXYZ 0123456789{}\":,.؟") + list("مرحباكيفحالكالقاهرة") +
                                         ["😀", "🚀", "٣", "٧", "\n", "\t"]), min_size=1, max_size=30)
# The hard cases too: content starting with whitespace (a leading newline merges with the marker's newline into
# one token, 108), whitespace only, and empty content.
CONTENT = st.one_of(TEXT, TEXT.map(lambda s: "\n" + s), TEXT.map(lambda s: " " + s), st.sampled_from(["", " ", "\n"]))


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


def hard_cases(tokenizer, messages: list[dict]) -> list[tuple[list[dict], int | None]]:
    """Deterministic hard cases built on one dataset conversation: leading newline/space/tab in a model, user or
    developer turn, empty and newline-only content, and truncation inside, at and just after the first model turn's
    response marker."""
    def edit(role, change):
        return [{**m, "content": change(m["content"])} if m["role"] == role else m for m in messages]

    cases = [(edit("assistant", lambda c: "\n" + c), None), (edit("assistant", lambda c: "\n\n" + c), None),
             (edit("assistant", lambda c: "\n"), None), (edit("user", lambda c: "\n" + c), None),
             (edit("system", lambda c: "\n" + c), None), (edit("assistant", lambda c: " " + c), None),
             (edit("assistant", lambda c: "\t" + c), None), (edit("assistant", lambda c: ""), None),
             (edit("user", lambda c: ""), None), (edit("assistant", lambda c: c + "\n"), None)]
    labels = chat_template_labels(tokenizer, messages)[1]
    first_trained = next(i for i, label in enumerate(labels) if label != -100)
    return cases + [(messages, first_trained + k) for k in (-2, -1, 0, 1, 2)]


@pytest.mark.claim("MASK-AGREEMENT")
def test_trl_unsloth_and_reference_maskers_agree_on_generated_conversations(tokenizer, tiny_dir, conversations,
                                                                             unsloth_fn, tmp_path_factory, certify):
    """TRL's own assistant-only labels (SFTTrainer's dataset preparation), Unsloth's masker and the reference masker
    on the same ids: generated conversations, the hard cases, and the dataset's; disagreements classified."""
    from datasets import disable_progress_bars

    disable_progress_bars()
    generated_cases = []

    @given(conversation())
    def generated(case):
        generated_cases.append(case)

    generated()
    hard = hard_cases(tokenizer, conversations[0])
    cases = generated_cases + hard + [(m, None) for m in conversations]
    trl = trl_assistant_only_trainer(tiny_dir, tokenizer, [m for m, _ in cases], tmp_path_factory.mktemp("trl"))
    trl_rows = {}
    for truncate in {t for _, t in cases}:
        trl_rows.update(trl_truncated(trl, [i for i, (_, t) in enumerate(cases) if t == truncate], truncate))
    facts = agreement_facts(tokenizer, cases, trl_rows, {"unsloth_zoo": unsloth_fn, "reference": reference_masker(tokenizer)})
    certify("MASK-AGREEMENT", {**facts, "generated_cases": len(generated_cases), "hard_cases": len(hard),
                               "dataset_cases": len(conversations)}, "cpu")


@pytest.mark.claim("MASK-LOSS")
def test_the_trainers_loss_ignores_masked_positions(hf_trainer, certify):
    """The trainer's training step: loss = mean CE over unmasked positions; masked logits change neither loss nor
    gradients; un-masking labels changes it."""
    batch = next(iter(hf_trainer.get_train_dataloader()))
    certify("MASK-LOSS", {**trainer_loss_facts(hf_trainer, batch), "trainer": type(hf_trainer).__name__,
                          "collator": type(hf_trainer.data_collator).__name__}, "tiny")
