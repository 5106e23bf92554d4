"""Training on responses only: this project's reference masker, and adapters for Unsloth's and TRL's.

Truth used by the specs: a token trains iff it lies inside a model turn's content or its closing
`<end_of_turn>\\n` (what the chat template's {% generation %} block marks). Everything else —
<bos>, developer/system and user turns, and the turn markers themselves — gets label -100.
"""

from __future__ import annotations

import os

from harness.tokenizer import INSTRUCTION_PART, RESPONSE_PART

IGNORE = -100


def marker_ids(tokenizer, marker: str) -> list[int]:
    return tokenizer.encode(marker, add_special_tokens=False)


def find(ids: list[int], pattern: list[int], start: int = 0) -> int:
    """Index of the first occurrence of `pattern` in `ids` at or after `start`, or -1."""
    n = len(pattern)
    first = pattern[0]
    for i in range(start, len(ids) - n + 1):
        if ids[i] == first and ids[i:i + n] == pattern:
            return i
    return -1


def reference_labels(ids: list[int], response: list[int], turn_start: int, bos: int = 2) -> list[int]:
    """Labels for `ids`: each model turn trains from after its response marker up to the next turn start.

    `turn_start` is the id of <start_of_turn>; a model turn ends where the next turn or the next
    packed sequence (<bos>) begins, or where the ids end (truncation), so its <end_of_turn> and
    newline train with it.
    """
    labels = [IGNORE] * len(ids)
    i = find(ids, response)
    while i != -1:
        j = i + len(response)
        while j < len(ids) and ids[j] != turn_start and ids[j] != bos:
            labels[j] = ids[j]
            j += 1
        i = find(ids, response, j)
    return labels


def reference_masker(tokenizer):
    response = marker_ids(tokenizer, RESPONSE_PART)
    turn_start = tokenizer.convert_tokens_to_ids("<start_of_turn>")
    return lambda ids: reference_labels(list(ids), response, turn_start, tokenizer.bos_token_id)


class UnslothUnavailable(RuntimeError):
    pass


def unsloth_masker(tokenizer):
    """Unsloth's own `train_on_responses_only` masking function (unsloth_zoo), usable without a GPU.

    `import unsloth` needs a GPU; unsloth_zoo's dataset utilities do not, once its GPU init is
    skipped (UNSLOTH_ZOO_DISABLE_GPU_INIT=1). This is the same function Unsloth maps over the
    trainer's dataset.
    """
    from harness import doctor

    for key, value in doctor.UNSLOTH_ZOO_ENV.items():
        os.environ.setdefault(key, value)
    try:  # in-process (a child's fresh torch import costs ~4 s); `harness doctor` checks it in a child
        from unsloth_zoo.dataset_utils import train_on_responses_only
    except Exception as exc:  # missing or broken: an environment problem, not a regression of the masking claims
        health = doctor.unsloth_zoo()
        if health.ok is not False:  # the child imported it; this process could not
            health = doctor.Health("unsloth_zoo", False, f"importing its masking function failed "
                                   f"({type(exc).__name__}: {exc})", doctor.UNSLOTH_ZOO_FIX)
        raise UnslothUnavailable(health.skip_reason()) from exc

    fn = train_on_responses_only(None, instruction_part=INSTRUCTION_PART, response_part=RESPONSE_PART,
                                 tokenizer=tokenizer, return_function=True)
    return lambda ids: fn({"input_ids": [list(ids)]})["labels"][0]


def trl_assistant_labels(tokenizer, messages: list[dict], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as TRL's assistant_only_loss builds them: the chat template's generation mask."""
    enc = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)]


def marker_report(tokenizer, text: str, ids: list[int]) -> dict:
    """For each marker: occurrences in the text vs occurrences of its standalone ids in `ids`.

    A difference means the marker merged with a neighbour (e.g. a turn whose content starts with
    a newline: "\\n" + "\\n" is one token) and a masker that searches ids will miss that turn.
    """
    report = {}
    for name, marker in (("instruction", INSTRUCTION_PART), ("response", RESPONSE_PART)):
        pattern = marker_ids(tokenizer, marker)
        found, i = 0, find(ids, pattern)
        while i != -1:
            found += 1
            i = find(ids, pattern, i + len(pattern))
        report[name] = {"in_text": text.count(marker), "in_ids": found}
    report["merged"] = any(r["in_text"] != r["in_ids"] for r in report.values() if isinstance(r, dict))
    return report


def compare_to_truth(ids: list[int], labels: list[int], truth: list[int], tokenizer) -> dict:
    """Counts for MASK-USER-TURNS: tokens trained that should not be, and the reverse, per model turn."""
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    start = tokenizer.convert_tokens_to_ids("<start_of_turn>")
    wrongly_trained = sum(1 for l, t in zip(labels, truth) if l != IGNORE and t == IGNORE)
    wrongly_masked = sum(1 for l, t in zip(labels, truth) if l == IGNORE and t != IGNORE)
    turns = _spans(truth)
    trained_turns = sum(all(labels[k] != IGNORE for k in range(a, b)) for a, b in turns)
    eot_ok = all(labels[k] != IGNORE for a, b in turns for k in range(a, b) if ids[k] == eot)
    markers_masked = all(labels[k] == IGNORE for k, tok in enumerate(ids) if tok == start)
    return {"wrongly_trained": wrongly_trained, "wrongly_masked": wrongly_masked, "model_turns": len(turns),
            "model_turns_trained": trained_turns, "end_of_turn_trained": eot_ok, "markers_masked": markers_masked}


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for k, l in enumerate(labels + [IGNORE]):
        if l != IGNORE and start is None:
            start = k
        elif l == IGNORE and start is not None:
            spans.append((start, k))
            start = None
    return spans


def user_turn_facts(tokenizer, conversations: list[list[dict]], labelled_rows: list[tuple[list[int], list[int]]],
                    implementation: str, max_length: int | None = None) -> dict:
    """MASK-USER-TURNS measurements: `labelled_rows` (input_ids, labels) from a masker vs the template's truth."""
    totals = {"conversations": 0, "tokens": 0, "wrongly_trained": 0, "wrongly_masked": 0, "model_turns": 0,
              "model_turns_trained": 0, "end_of_turn_trained": True, "markers_masked": True, "ids_differ": 0}
    for messages, (ids, labels) in zip(conversations, labelled_rows):
        truth_ids, truth = trl_assistant_labels(tokenizer, messages, max_length)
        if list(ids) != truth_ids:
            totals["ids_differ"] += 1
            continue
        facts = compare_to_truth(list(ids), list(labels), truth, tokenizer)
        totals["conversations"] += 1
        totals["tokens"] += len(ids)
        for key in ("wrongly_trained", "wrongly_masked", "model_turns", "model_turns_trained"):
            totals[key] += facts[key]
        totals["end_of_turn_trained"] &= facts["end_of_turn_trained"]
        totals["markers_masked"] &= facts["markers_masked"]
    totals["implementation"] = implementation
    return totals
