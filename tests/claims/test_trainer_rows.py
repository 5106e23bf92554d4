"""The rows the trainer holds and is fed, on the CPU: the hf backend's trainer (TRL's SFTTrainer preparing the backend's
rows) at the recipe's max_seq_length, built over the training split's 128 longest conversations and 128 more spread over
it; every conversation's template length is measured."""

import pytest

from harness.recipe import HANDBOOK


@pytest.fixture(scope="module")
def built(tiny_dir, tokenizer, dataset, tmp_path_factory):
    """(every training conversation's template length, the probed conversations, their full template rows, the rows
    given to the trainer, the trainer)."""
    from datasets import disable_progress_bars

    from harness.row_facts import probe_rows, template_lengths, trainer_rows

    disable_progress_bars()
    everything = [ex.messages for ex in dataset["train"]]
    lengths = template_lengths(tokenizer, everything)
    conversations = [everything[i] for i in probe_rows(lengths)]
    full, given, trainer = trainer_rows(tokenizer, tiny_dir, conversations, HANDBOOK.with_(model="tiny"),
                                        tmp_path_factory.mktemp("trainer-rows"))
    return lengths, conversations, full, given, trainer


@pytest.mark.claim("ROWS-SPECIAL-TOKENS")
def test_held_rows_carry_one_bos_and_the_templates_markers_only(built, tokenizer, certify):
    """Every row of the trainer's dataset: one <bos>, first; the template rendered as text (or its truncation); no
    <eos>; a complete row ends with the final <end_of_turn>\\n."""
    from harness.row_facts import special_token_facts

    _, conversations, _, _, trainer = built
    facts = special_token_facts(tokenizer, conversations, trainer.train_dataset["input_ids"], trainer.args.max_length)
    certify("ROWS-SPECIAL-TOKENS", {**facts, "backend": "hf/cpu", "trainer": type(trainer).__name__}, "tiny")


@pytest.mark.claim("ROWS-TRUNCATION")
def test_no_answer_is_cut_or_dropped_at_max_seq_length(built, tokenizer, certify):
    """At the recipe's max_seq_length: no template of the split over it; of the probed rows (the longest among them)
    none cut or dropped by the trainer's preparation, no trained token lost, and every row its dataloader feeds has a
    trained label."""
    from harness.masking import reference_masker
    from harness.row_facts import truncation_facts

    lengths, _, full, given, trainer = built
    held = trainer.train_dataset
    facts = truncation_facts(lengths, full, reference_masker(tokenizer), given,
                             [{"input_ids": i, "labels": label} for i, label in zip(held["input_ids"], held["labels"])],
                             trainer.get_train_dataloader(), HANDBOOK.max_seq_length, trainer.args.max_length)
    certify("ROWS-TRUNCATION", {**facts, "backend": "hf/cpu"}, "tiny")
