"""The rows the trainer holds after every library's preprocessing: special tokens and truncation.

Real bugs lived here, after the tokenizer and before the loss: TRL's SFT data preparation put a second <bos> in front
of chat-templated rows, or an <eos> after them (trl #1400, #3318, PR #3091/#3328), and truncation at max_seq_length
silently cut or dropped the answers, reporting a loss of 0.0 as success (trl #3927/#3930/#6668, unsloth #11321).
A check of the tokenizer's or the masker's output sees none of it: these facts are read from `trainer.train_dataset`
(what the trainer's dataset holds once TRL and the backend are done) and from the batches its dataloader yields.

ROWS-SPECIAL-TOKENS compares each held row with the chat template rendered as TEXT and tokenized with no special
tokens added (the template's own `<bos>` is its only one): an independent path from the `apply_chat_template(...,
tokenize=True)` ids the pipeline feeds. ROWS-TRUNCATION compares the held rows with the pipeline's own full-length
template rows, so the two claims judge different things (a doubled <bos> is not a truncation, a cut row is still a
prefix of its template).
"""

from __future__ import annotations

IGNORE = -100


def _ids(tokenizer) -> dict[str, int]:
    return {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
            "start_of_turn": tokenizer.convert_tokens_to_ids("<start_of_turn>"),
            "end_of_turn": tokenizer.convert_tokens_to_ids("<end_of_turn>"), "newline": tokenizer.convert_tokens_to_ids("\n")}


def rendered_reference(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Each conversation's chat template rendered as text, tokenized with add_special_tokens=False: the markers and
    the one <bos> exactly as the template writes them."""
    texts = [tokenizer.apply_chat_template(messages, tokenize=False) for messages in conversations]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def special_token_facts(tokenizer, conversations: list[list[dict]], rows: list[list[int]], max_length: int | None) -> dict:
    """ROWS-SPECIAL-TOKENS from the rows a trainer holds (`rows`, its dataset's input_ids, any order).

    A row is "as the template renders" when it equals one conversation's rendered reference, or (cut by the trainer's
    truncation) that reference's first `max_length` ids. Independently of that match: <bos> exactly once and first,
    no <eos> anywhere, nothing after a complete row's final `<end_of_turn>\\n`, and as many turn markers as the
    reference holds over the same span.
    """
    t = _ids(tokenizer)
    references = rendered_reference(tokenizer, conversations)
    full = {tuple(r): r for r in references}
    prefixes = {tuple(r[:max_length]): r for r in references if max_length is not None and len(r) > max_length}
    facts = {"rows": len(rows), "conversations": len(conversations), "rows_bos_not_once": 0, "rows_not_starting_bos": 0,
             "rows_with_eos": 0, "rows_not_as_template": 0, "rows_past_template_end": 0, "complete_rows": 0,
             "complete_rows_not_ending_end_of_turn_newline": 0, "rows_marker_count_differs": 0, "first_odd_row": None}
    for row in rows:
        row = list(row)
        odd = []
        if row.count(t["bos"]) != 1:
            facts["rows_bos_not_once"] += 1
            odd.append(f"<bos> x{row.count(t['bos'])}")
        if not row or row[0] != t["bos"]:
            facts["rows_not_starting_bos"] += 1
            odd.append("does not start with <bos>")
        if t["eos"] in row:
            facts["rows_with_eos"] += 1
            odd.append(f"<eos> at {row.index(t['eos'])} of {len(row)}")
        reference = full.get(tuple(row))
        complete = reference is not None
        if reference is None:
            reference = prefixes.get(tuple(row))
        if reference is None:
            facts["rows_not_as_template"] += 1
            odd.append("not the rendered template (nor its truncation)")
            # The longest reference this row extends: stray ids after a complete template (an appended <eos>).
            for r in references:
                if len(row) > len(r) and row[:len(r)] == r:
                    facts["rows_past_template_end"] += 1
                    odd.append(f"{len(row) - len(r)} id(s) after the template's end: {row[len(r):][:4]}")
                    break
        else:
            span = reference[:len(row)]
            if any(row.count(t[k]) != span.count(t[k]) for k in ("start_of_turn", "end_of_turn")):
                facts["rows_marker_count_differs"] += 1
        if complete:
            facts["complete_rows"] += 1
            if row[-2:] != [t["end_of_turn"], t["newline"]]:
                facts["complete_rows_not_ending_end_of_turn_newline"] += 1
        if odd and facts["first_odd_row"] is None:
            facts["first_odd_row"] = {"length": len(row), "head": row[:6], "tail": row[-4:], "what": odd}
    facts["special_ids"] = t
    return facts


def template_lengths(tokenizer, conversations: list[list[dict]]) -> list[int]:
    """Each conversation's chat-template length in ids, untruncated (one batched apply_chat_template: ~2.5 s for
    12,000 conversations on 2 cores)."""
    return [len(ids) for ids in tokenizer.apply_chat_template(conversations, return_dict=True)["input_ids"]]


def probe_rows(lengths: list[int], longest: int = 128, spread: int = 128) -> list[int]:
    """Indices of the rows a trainer is built over: the `longest` longest templates (where truncation bites) and
    `spread` more evenly spaced over the split (the special tokens of any row), in split order."""
    by_length = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))[:longest]
    step = max(1, len(lengths) // max(1, spread))
    return sorted(set(by_length) | set(range(0, len(lengths), step)))


def truncation_facts(lengths: list[int], full_rows: list[list[int]], masker, given_rows: list[dict], held_rows: list[dict],
                     batches, max_seq_length: int, trainer_max_length: int | None) -> dict:
    """ROWS-TRUNCATION: what truncation took from the answers on the way to the loss.

    lengths: every conversation's template length (the whole split). full_rows: the template ids, untruncated, of the
    rows a trainer was built over (harness.row_facts.probe_rows: the longest among them); masker: the labels the
    pipeline gives them (harness.masking.reference_masker). given_rows: the rows handed to that trainer
    ({"input_ids", "labels"}: the backend's rows, truncated to max_seq_length). held_rows: the rows its dataset holds
    after its own preparation (truncation, dropping rows left without a label). batches: what its dataloader yields.
    Every conversation ends with a trained model turn, so any row shorter than its template lost answer tokens.
    """
    full_set = {tuple(r) for r in full_rows}
    trained_full = sum(sum(label != IGNORE for label in masker(ids)) for ids in full_rows)
    held_ids = [list(row["input_ids"]) for row in held_rows]
    held_trained = sum(sum(label != IGNORE for label in row["labels"]) for row in held_rows)
    facts = {
        "conversations": len(lengths), "max_seq_length": max_seq_length, "trainer_max_length": trainer_max_length,
        "template_tokens_max": max(lengths, default=0), "template_tokens_min": min(lengths, default=0),
        "rows_over_max_seq_length": sum(n > max_seq_length for n in lengths),
        "rows_given": len(given_rows), "rows_given_longest_template": max((len(r) for r in full_rows), default=0),
        "rows_held": len(held_rows), "rows_dropped": len(given_rows) - len(held_rows),
        "rows_cut": sum(tuple(ids) not in full_set for ids in held_ids),
        "trained_tokens_in_templates": trained_full, "trained_tokens_held": held_trained,
        "trained_tokens_lost": trained_full - held_trained,
        "batches_fed": 0, "rows_fed": 0, "rows_fed_without_trained_label": 0, "trained_labels_fed": 0,
    }
    for batch in batches:
        labels = batch["labels"]
        facts["batches_fed"] += 1
        facts["rows_fed"] += int(labels.shape[0])
        # A causal LM trains label[i] at position i-1: position 0's label never reaches the loss.
        trained = (labels[:, 1:] != IGNORE).sum(dim=1)
        facts["rows_fed_without_trained_label"] += int((trained == 0).sum())
        facts["trained_labels_fed"] += int(trained.sum())
    return facts


def trainer_rows(tokenizer, source_dir, conversations: list[list[dict]], recipe, out_dir, backend: str = "hf"):
    """(full template rows, rows given to the trainer, the built trainer): the backend's trainer over `conversations`,
    built as harness.finetune builds it (rows from harness.backends.sft.tokenize_conversations with the reference
    masker, truncated to the recipe's max_seq_length; then the backend's build_trainer)."""
    from pathlib import Path

    from harness.backends import get
    from harness.backends.sft import tokenize_conversations
    from harness.masking import reference_masker
    from harness.train_hf import load_model

    impl = get(backend)
    full = [list(tokenizer.apply_chat_template(m, return_dict=True)["input_ids"]) for m in conversations]
    given = impl.train_rows(tokenize_conversations(tokenizer, conversations, reference_masker(tokenizer),
                                                   recipe.max_seq_length))
    # The model only carries the trainer: no LoRA, no training (the rows are what is measured).
    model = load_model(Path(source_dir), recipe, load_in_4bit=False)
    built = impl.build_trainer(model, tokenizer, recipe, Path(out_dir), Path(source_dir), given, None, "none", [], False)
    return full, given, built.trainer
