"""Training on responses only: this project's reference masker, the handbook's trainer on the CPU, and adapters for
Unsloth's and TRL's own masking code paths.

Truth used by the specs: a token trains iff it lies inside a model turn's content or its closing
`<end_of_turn>\\n` (what the chat template's {% generation %} block marks). Everything else —
<bos>, developer/system and user turns, and the turn markers themselves — gets label -100.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

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


def _unsloth_train_on_responses_only():
    """unsloth_zoo's `train_on_responses_only` (what `unsloth.chat_templates` re-exports), imported on the CPU.

    `import unsloth` needs a GPU; unsloth_zoo's dataset utilities do not, once its GPU init is
    skipped (UNSLOTH_ZOO_DISABLE_GPU_INIT=1).
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
    return train_on_responses_only


def unsloth_masker(tokenizer):
    """Unsloth's own masking function (unsloth_zoo), usable without a GPU: the same function Unsloth maps over the
    trainer's dataset."""
    fn = _unsloth_train_on_responses_only()(None, instruction_part=INSTRUCTION_PART, response_part=RESPONSE_PART,
                                             tokenizer=tokenizer, return_function=True)
    return lambda ids: fn({"input_ids": [list(ids)]})["labels"][0]


def chat_template_labels(tokenizer, messages: list[dict], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) from the chat template's {% generation %} mask (transformers' assistant mask), truncated
    as a trainer truncates (keep the start): the truth the masking claims compare against."""
    enc = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)]


def handbook_trainer(model_dir, tokenizer, conversations: list[list[dict]], recipe, out_dir):
    """The handbook's trainer on the CPU: TRL's SFTTrainer given the chat template's ids, untruncated (the trainer
    truncates them to `recipe.max_seq_length`), then `train_on_responses_only(trainer, instruction_part,
    response_part)` from unsloth_zoo, called as harness.train_unsloth.build_unsloth_trainer calls it on the GPU.

    The model is the hf backend's (LoRA on float32 weights: `import unsloth` needs a GPU) and so is the CPU loss
    (harness.backends.sft.cpu_sft_trainer_class: TRL's fused LM head is Triton-only).
    """
    from harness.backends.sft import sft_kwargs
    from harness.train_hf import build_sft_trainer

    train_on_responses_only = _unsloth_train_on_responses_only()
    rows = [{"input_ids": list(tokenizer.apply_chat_template(m, return_dict=True)["input_ids"])} for m in conversations]
    trainer = build_sft_trainer(model_dir, recipe, out_dir, train_rows=rows, tokenizer=tokenizer,
                                sft_args=sft_kwargs(recipe, Path(out_dir), on_gpu=False))
    # num_proc=1 as on the GPU (harness.train_unsloth): unsloth_zoo maps in this process.
    return train_on_responses_only(trainer, instruction_part=recipe.instruction_part,
                                   response_part=recipe.response_part, num_proc=1)


def fed_batch_facts(tokenizer, conversations: list[list[dict]], batches, max_length: int | None) -> dict:
    """MASK-LABELS-NOT-IDS measurements from the batches a trainer's dataloader yields.

    Each row's attended input_ids must be the chat template's ids of one of `conversations` (truncated as the
    trainer truncates); the dataloader shuffles, so a row is matched to its conversation by those ids, and a row
    that matches none counts as changed. Labels: -100 wherever the template's truth is -100 and on padding, the
    row's own id elsewhere; -100 anywhere in input_ids (padding included) is counted apart.
    """
    import torch

    truth = {}
    for messages in conversations:
        ids, labels = chat_template_labels(tokenizer, messages, max_length)
        truth[tuple(ids)] = labels
    facts = {"batches": 0, "rows": 0, "input_ids_changed": 0, "ids_equal_minus_100": 0, "labels_minus_100": 0,
             "masked_positions_trained": 0, "labels_not_ids": 0, "padding_trained": 0, "first_changed_row": None}
    fed = set()
    for batch in batches:
        facts["batches"] += 1
        ids_t, labels_t = batch["input_ids"], batch["labels"]
        attention = batch.get("attention_mask")
        attention = torch.ones_like(ids_t) if attention is None else attention
        facts["ids_equal_minus_100"] += int((ids_t == IGNORE).sum())
        for row_ids, row_labels, row_attention in zip(ids_t.tolist(), labels_t.tolist(), attention.tolist()):
            facts["rows"] += 1
            ids = [t for t, a in zip(row_ids, row_attention) if a]
            labels = [label for label, a in zip(row_labels, row_attention) if a]
            facts["padding_trained"] += sum(label != IGNORE for label, a in zip(row_labels, row_attention) if not a)
            facts["labels_minus_100"] += labels.count(IGNORE)
            facts["labels_not_ids"] += sum(label not in (IGNORE, t) for t, label in zip(ids, labels))
            expected = truth.get(tuple(ids))
            if expected is None:
                facts["input_ids_changed"] += 1
                facts["first_changed_row"] = facts["first_changed_row"] or {
                    "length": len(ids), "minus_100_in_ids": ids.count(IGNORE),
                    "length_is_a_template_length": len(ids) in {len(k) for k in truth}}
                continue
            fed.add(tuple(ids))
            facts["masked_positions_trained"] += sum(label != IGNORE and e == IGNORE for label, e in zip(labels, expected))
    facts["conversations"] = len(conversations)
    facts["conversations_fed"] = len(fed)  # distinct template rows seen (truncation can make two rows equal)
    facts["template_rows_not_fed"] = len(truth) - len(fed)
    return facts


def trl_assistant_only_trainer(model_dir, tokenizer, conversations: list[list[dict]], out_dir):
    """TRL's own assistant-only path: SFTTrainer(assistant_only_loss=True) on conversational rows, untruncated.

    Its dataset preparation (SFTTrainer._prepare_dataset) tokenizes each conversation with the chat template's
    assistant mask and builds the `labels` the trainer trains on (the id where the mask is 1, else -100);
    `trainer.train_dataset` holds them with a `case` column (the index into `conversations`). Tokenizing costs
    ~2.4 s for any number of rows (datasets fingerprints the 32 MB tokenizer passed to the map), so all
    conversations go through one trainer.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = SFTConfig(output_dir=str(out_dir), assistant_only_loss=True, max_length=None, use_cpu=True, bf16=False,
                     fp16=False, report_to="none", dataset_num_proc=None, disable_tqdm=True)
    rows = Dataset.from_list([{"messages": m, "case": i} for i, m in enumerate(conversations)])
    return SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)


def trl_truncated(trainer, cases: list[int], max_length: int | None) -> dict[int, tuple[list[int], list[int]]]:
    """TRL's truncation of prepared rows (`cases`, indices into the trainer's dataset) to `max_length`, by TRL's own
    preparation of already tokenized rows: cut on the side of `truncation_mode` (keep_start by default), then drop
    rows left without a trained token.
    Returns case -> (input_ids, labels) for the rows TRL keeps."""
    rows = trainer.train_dataset.select(cases)
    if max_length is not None:
        args = copy.copy(trainer.args)
        args.max_length = max_length
        rows = trainer._prepare_dataset(rows, trainer.processing_class, args, False, None, f"max_length={max_length}")
    if "labels" in rows.column_names:
        labels = rows["labels"]
    else:
        # trl 0.24.0 (measured 2026-11-28, the HF stack unsloth 2026.9.14 declares) keeps `assistant_masks` and builds
        # the labels in its collator (DataCollatorForLanguageModeling: -100 where the mask is 0): read them by that
        # rule. Reading a `labels` column that old TRL never writes crashed the check (ValueError), not TRL.
        labels = [[i if m else -100 for i, m in zip(ids, mask)]
                  for ids, mask in zip(rows["input_ids"], rows["assistant_masks"])]
    return {case: (list(ids), list(lab)) for case, ids, lab in zip(rows["case"], rows["input_ids"], labels)}


def merged_model_turns(tokenizer, ids: list[int]) -> set[int]:
    """Positions of model turns whose response marker's closing newline merged with the content's leading newline
    ("\\n" + "\\n" is one token, 108): `<start_of_turn>model` not followed by the marker's "\\n" id, up to the next
    <start_of_turn> or the end of the ids."""
    response = marker_ids(tokenizer, RESPONSE_PART)
    head, newline, turn_start = response[:-1], response[-1], response[0]
    positions, i = set(), find(ids, head)
    while i != -1:
        j = i + len(head)
        if j < len(ids) and ids[j] != newline:
            while j < len(ids) and ids[j] != turn_start:
                positions.add(j)
                j += 1
        i = find(ids, head, j)
    return positions


def agreement_facts(tokenizer, cases: list[tuple[list[dict], int | None]], trl_rows: dict, maskers: dict) -> dict:
    """MASK-AGREEMENT measurements: TRL's labels (`trl_rows`: case -> (ids, labels); a case TRL dropped, left with
    nothing to train after truncation, trains nothing: all -100) against each of `maskers` (name -> fn(ids)) run on
    the ids TRL trains on. A case disagrees if any two parties' labels differ or TRL's ids are not the template's.
    Its class is the measured cause: `leading_newline` when every differing position lies in a model turn whose
    response marker merged with a leading newline (merged_model_turns), else `other`."""
    names = ["trl", *maskers]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    facts = {"cases": len(cases), "implementations": ["trl assistant_only_loss (SFTTrainer dataset preparation)",
                                                      *maskers],
             "disagreements": 0, "disagreements_leading_newline": 0, "disagreements_other": 0,
             "leading_newline_cases": 0, "trl_dropped": 0, "trl_ids_differ_from_template": 0,
             "by_pair": {f"{a}!={b}": 0 for a, b in pairs}, "tokens_trained_by_trl_only": 0,
             "tokens_trained_by_unsloth_only": 0, "first_leading_newline": None, "first_other": None}
    for case, (messages, truncate) in enumerate(cases):
        template_ids = chat_template_labels(tokenizer, messages, truncate)[0]
        if case in trl_rows:
            ids, trl = trl_rows[case]
        else:
            facts["trl_dropped"] += 1
            ids, trl = template_ids, [IGNORE] * len(template_ids)
        ids_differ = ids != template_ids
        facts["trl_ids_differ_from_template"] += ids_differ
        merged = merged_model_turns(tokenizer, ids)
        facts["leading_newline_cases"] += bool(merged)
        labels = {"trl": trl, **{name: list(fn(ids)) for name, fn in maskers.items()}}
        differ = [f"{a}!={b}" for a, b in pairs if labels[a] != labels[b]]
        for pair in differ:
            facts["by_pair"][pair] += 1
        if "unsloth_zoo" in labels:
            unsloth = labels["unsloth_zoo"]
            facts["tokens_trained_by_trl_only"] += sum(t != IGNORE and u == IGNORE for t, u in zip(trl, unsloth))
            facts["tokens_trained_by_unsloth_only"] += sum(t == IGNORE and u != IGNORE for t, u in zip(trl, unsloth))
        if not differ and not ids_differ:
            continue
        positions = {k for a, b in pairs for k, (x, y) in enumerate(zip(labels[a], labels[b])) if x != y}
        kind = "leading_newline" if not ids_differ and positions <= merged else "other"
        facts["disagreements"] += 1
        facts[f"disagreements_{kind}"] += 1
        facts[f"first_{kind}"] = facts[f"first_{kind}"] or {"messages": messages, "truncate": truncate, "pairs": differ}
    return facts


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
    """MASK-USER-TURNS measurements: `labelled_rows` (input_ids, labels) from a masker vs the template's truth.

    A row whose ids are not the template's (truncated to `max_length`) cannot be compared: it is counted in
    `ids_differ`, which the claim bounds to 0, so rows left out can never hide a masking failure.
    """
    totals = {"conversations": 0, "tokens": 0, "wrongly_trained": 0, "wrongly_masked": 0, "model_turns": 0,
              "model_turns_trained": 0, "end_of_turn_trained": True, "markers_masked": True, "ids_differ": 0}
    for messages, (ids, labels) in zip(conversations, labelled_rows):
        truth_ids, truth = chat_template_labels(tokenizer, messages, max_length)
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


def trainer_loss_facts(trainer, batch: dict, rows: int = 2, seed: int = 0) -> dict:
    """MASK-LOSS measurements from the trainer's own training step on `rows` rows of one of its batches.

    The step is `trainer.training_step` with the token count the trainer itself computes (`get_batch_samples`), so
    the loss is the one that trains. It is compared with a mean cross entropy over the unmasked positions computed
    here from the model's hidden states (log_softmax + gather, not torch's cross_entropy). Perturbation: noise is
    added to the LM head's input (the final norm's output, the head's only input, so the noise reaches exactly
    those positions' logits, whichever positions the trainer projects) where the shifted label is -100; the loss
    and every parameter gradient must stay bit-identical and the gradient reaching those positions must be 0.
    Sensitivity: the same noise at 3 unmasked positions, and giving 4 masked positions their token ids, must
    each change the loss (else the checks above could pass vacuously).
    """
    import torch

    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    norm = base.model.norm
    small = {k: v[:rows] for k, v in batch.items()}
    labels = small["labels"]
    attention = small.get("attention_mask", torch.ones_like(labels))
    predicts_masked = torch.ones_like(labels, dtype=torch.bool)  # hidden position p predicts label p + 1
    predicts_masked[:, :-1] = labels[:, 1:] == IGNORE
    g = torch.Generator().manual_seed(seed)
    noise = 5 * torch.randn((*labels.shape, base.config.hidden_size), generator=g)

    def step(step_labels, noise_at=None):
        captured = {}

        def hook(module, args, out):
            if noise_at is not None:
                out = out + noise * noise_at[..., None].to(out.dtype)
            out.register_hook(lambda grad: captured.setdefault("grad", grad.detach().clone()))
            return out

        inputs = {**small, "labels": step_labels}
        [inputs], items = trainer.get_batch_samples(iter([inputs]), 1, trainer.args.device)
        handle = norm.register_forward_hook(hook)
        model.zero_grad(set_to_none=True)
        try:
            loss = trainer.training_step(model, dict(inputs), items)
        finally:
            handle.remove()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.detach().float(), grads, captured["grad"], items

    loss, grads, _, items = step(labels)
    with torch.no_grad():
        hidden = base.model(input_ids=small["input_ids"], attention_mask=attention).last_hidden_state
        shifted = labels[:, 1:]
        keep = shifted != IGNORE
        logits = base.lm_head(hidden[:, :-1][keep]).float()
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        manual = -torch.log_softmax(logits, dim=-1).gather(1, shifted[keep][:, None]).mean()
    loss_masked_noise, grads_masked_noise, hidden_grad, _ = step(labels, predicts_masked)
    live = (~predicts_masked).nonzero()[:3]
    noise_live = torch.zeros_like(predicts_masked)
    noise_live[live[:, 0], live[:, 1]] = True
    loss_live_noise, _, _, _ = step(labels, noise_live)
    unmasked = labels.clone()
    masked_inside = ((labels == IGNORE) & attention.bool()).nonzero()
    masked_inside = masked_inside[masked_inside[:, 1] > 0][:4]  # position 0 is never a target
    unmasked[masked_inside[:, 0], masked_inside[:, 1]] = small["input_ids"][masked_inside[:, 0], masked_inside[:, 1]]
    loss_unmasked, _, _, items_unmasked = step(unmasked)
    model.zero_grad(set_to_none=True)
    return {
        "loss": float(loss), "manual": float(manual),
        "loss_vs_manual": float((loss - manual).abs() / manual.abs()),  # relative: float32 sums in another order
        "num_items_in_batch": int(items) if items is not None else None, "unmasked": int(keep.sum()),
        "masked_perturbation_loss_delta": float((loss_masked_noise - loss).abs()),
        "masked_perturbation_grad_delta": float((grads_masked_noise - grads).abs().max()),
        "masked_position_grad_max": float(hidden_grad[predicts_masked].abs().max()),
        "unmasked_perturbation_loss_delta": float((loss_live_noise - loss).abs()),
        "unmasked_labels_loss_delta": float((loss_unmasked - loss).abs()),
        "unmasked_labels_items_delta": int(items_unmasked) - int(items) if items is not None else None,
        "labels_unmasked": len(masked_inside), "rows": rows, "positions": int(attention.sum()) - rows,
        "parameters_with_grad": int(sum(p.requires_grad for p in model.parameters())),
    }
