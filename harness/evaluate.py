"""Held-out evaluation: batched greedy generation on the test split, scored as function calls (harness.scoring).

Every output of every run can be stored (`outputs_path`, JSONL beside the run record) so that failures and paired
comparisons between runs can be computed later from the outputs themselves, not only from the summary figures.
torch is imported where generation runs, so the scoring side imports on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness.scoring import parse_call
from harness.scoring import score as _score

# The largest GPU generation batch. A decoding step costs about the same from 16 to 128 prompts on an H200 (kernel
# launches and Python, not arithmetic: 0.092 s a step over batches of 64 and 128 for the diagnostic split, 0.15 s beside
# the base evaluation for the test split; reports/examples/h200-2026-11-29-gpu-tier-s16), so an evaluation costs its
# decoding steps: 2,240 prompts took 18 batches and 665 steps at a cap of 128 (147.2 s), and at 512 6 batches and 220
# steps (71.9 s, 0.12 s a step at 512; reports/examples/h200-2026-11-29-gpu-tier-s17). The memory stays measured
# (measured_batch: 17.5 MB a prompt for the reference run, ~9 GB for 512).
CUDA_BATCH = 512
CUDA_MIN_BATCH = 16
CPU_BATCH = 16
_UNSET = object()


def cuda_batch(free_bytes: int, longest_prompt: int, vocab: int, share: float = 0.25) -> int:
    """The generation batch on a GPU: as many prompts as `share` of the GPU's free memory (a quarter; runs sharing a GPU
    split it: $HARNESS_EVAL_MEMORY_SHARE from harness.run_queue.shared_gpu_env) holds of their prefill
    logits in float32 (longest prompt × vocabulary × 4 B each: the worst case, a backend that computes them at every
    position), a power of two from CUDA_MIN_BATCH to CUDA_BATCH; the rest of the memory stays with the runs beside it.

    Why not a fixed 16: on an H200 beside the probes (2026-11-28) a decoding step of 16 prompts took 0.14 s, nearly
    all of it per step and not per prompt (0.07 s once the CPU was less loaded), so 2,240 prompts cost 605 s in 4,313
    steps; with 64 prompts a step, a quarter of the steps. 320-token prompts over Gemma 3's 262,144 entries: 320 MiB
    each, so 64 where 80 GiB or more are free (an idle H200 has ~139), 32 from 40 GiB, else 16."""
    per_prompt = max(1, longest_prompt) * max(1, vocab) * 4
    fits = max(1, int(free_bytes * share) // per_prompt)
    batch = CUDA_MIN_BATCH
    while batch * 2 <= min(fits, CUDA_BATCH):
        batch *= 2
    return batch


def measured_batch(current: int, peak_bytes: int, prompts: int, free_bytes: int, share: float, margin: float = 2.0) -> int:
    """The batch after the first one, from what that batch really took: `peak_bytes` above the memory held before it
    (torch.cuda.max_memory_allocated, this process only) for `prompts` prompts, the longest of all (length_order), so
    no later batch needs more a prompt. As many as `share` of the memory free now holds at `margin` times the measured
    cost a prompt (the allocator's rounding, a neighbour's growth), a power of two, never below `current` (which ran)
    nor above CUDA_BATCH.

    Why: cuda_batch sizes the first batch for the worst case (float32 logits at every prompt position, 320 MiB a
    prompt). In the shared GPU tier each of 13 slots counts on 1/13 of a quarter of the free memory, so the worst case
    held the batch at 16 for every held-out evaluation (0.13-0.15 s a decoding step of 16 prompts on an H200,
    2026-11-28), while a batch of 64 stepped at 0.08-0.09 s (reports/examples/h200-2026-11-28-gguf-heldout)."""
    if peak_bytes <= 0:  # memory freed during the batch hid its cost: no measurement, no growth
        return max(1, current)
    per_prompt = peak_bytes / max(1, prompts) * margin
    fits = int(free_bytes * share // per_prompt)
    batch = max(1, current)
    while batch * 2 <= min(fits, CUDA_BATCH):
        batch *= 2
    return batch


def _dynamo_config(device_type: str):
    """torch._dynamo.config where the evaluation should compile with dynamic sizes from the first call: on a GPU, with a
    torch that has the option; else None."""
    if device_type != "cuda":
        return None
    import torch

    config = getattr(getattr(torch, "_dynamo", None), "config", None)
    return config if config is not None and hasattr(config, "assume_static_by_default") else None


def dynamic_shapes_from_the_first_call(device_type: str):
    """On a GPU, a context in which torch.compile traces with dynamic sizes from a graph's first call
    (torch._dynamo.config.assume_static_by_default=False); elsewhere, or on a torch without the option, a no-op.

    Why (measured on an H200, 2026-11-29, reports/examples/h200-2026-11-29-gpu-tier-s16): generation with Unsloth's
    Gemma 3 goes through transformers' `torch.compile(flex_attention)` (no `dynamic` argument: this option decides;
    Unsloth's own compiled functions are `dynamic=True` already), and by default dynamo compiles a static graph at the
    first shape, then recompiles with dynamic sizes at the next: a cold first batch cost 67 s and the first batch of
    another size 54 s more, against ~5 s for a repeat (a stack sampler put the time in dynamo, fake tensors, sympy and
    Triton's compiler, under `set_stance("force_eager")` too). With dynamic sizes from the first call: 67.6 s once, then
    5.0-5.6 s at batch sizes 128, 32 and 192; and a second process with the same inductor cache paid 29.9 s for its
    first batch instead of 67.6 (a static graph hits that cache only at the same shapes; the reference run's trained
    evaluation and its base evaluation, run beside it, have different first shapes). The batches of a later shape
    already ran on such dynamic graphs; answers of one process: batches of 64 and 128 equal to the same prompts in a
    batch of 192 (64/64, 128/128); GPU greedy answers are not invariant to batch composition or process anyway (the
    same 192 prompts in two processes: 177/192 equal, base model's free text).

    Process-wide while it lasts (torch 2.11 sets a plain attribute): nothing else compiles in an evaluating process
    meanwhile (a review of 2026-11-29 read the callers). Not around the trained run's validation loss (trainer.evaluate:
    its flex_attention graph is compiled static there, so the first generation batch recompiles once, dynamic)."""
    import contextlib

    config = _dynamo_config(device_type)
    return contextlib.nullcontext() if config is None else config.patch(assume_static_by_default=False)


def length_order(lengths: list[int]) -> list[int]:
    """Indices of the prompts longest first: a batch then holds prompts of similar length (little left padding),
    and the largest batch comes first, so an out-of-memory shows at once rather than at the end. Stable for ties."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def prompt_ids(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """The token ids a held-out prompt is answered from (the chat template as text, then tokenized without added
    specials: the template writes the one <bos>). GGUF-HELDOUT gives llama.cpp these same ids."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64, batch_size: int | None = None,
                     desc: str = "evaluate", stats: dict | None = None) -> list[str]:
    """Greedy answers to chat prompts (the conversation up to the last user turn), in the order of `prompts`.

    Why it is fast: the KV cache is on (`use_cache=True` passed to generate and set in the model's config for the
    call; training turns it off for gradient checkpointing, and without it each new token re-runs the whole
    prompt: the v1 eval took ~0.37 s per decoding step of 64 prompts on an H200), prompts are batched by length
    (sorted, so padding is small), and the GPU batch is sized by free memory (cuda_batch). Left padding with its
    attention mask leaves greedy answers equal to those of one prompt at a time (tests/unit/test_evaluate.py).

    stats: filled with where the time went (seconds, batches, decoding steps, generated tokens): the GPU tier's
    evaluation of 2,240 prompts took 663 s on an H200 beside the probes (issue #13), which this tells apart."""
    import time

    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    stop = [tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id]
    ids = prompt_ids(tokenizer, prompts)
    order = length_order([len(x) for x in ids])
    # $HARNESS_EVAL_BATCH fixes the batch; else on a GPU it is sized by the memory free now (cuda_batch), and halved
    # on an out-of-memory error (the longest prompts come first, so that shows in the first batch)
    if not batch_size and os.environ.get("HARNESS_EVAL_BATCH"):
        batch_size = int(os.environ["HARNESS_EVAL_BATCH"])
    measure = not batch_size and device.type == "cuda"  # sized here: grown from the first batch's measured peak
    share = float(os.environ.get("HARNESS_EVAL_MEMORY_SHARE") or 0.25)
    if measure:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
        batch_size = cuda_batch(torch.cuda.mem_get_info(device)[0], max((len(x) for x in ids), default=1), vocab, share)
    batch_size = batch_size or CPU_BATCH
    first_batch, halvings, batches, measured = batch_size, 0, 0, None
    configs = [c for c in (getattr(model, "config", None), getattr(model, "generation_config", None)) if c is not None]
    saved = [(c, getattr(c, "use_cache", _UNSET)) for c in configs]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    answers: list[str | None] = [None] * len(prompts)
    started, steps, generated, first = time.perf_counter(), 0, 0, None
    try:
        for c in configs:
            c.use_cache = True
        with torch.no_grad(), dynamic_shapes_from_the_first_call(device.type), \
                tqdm(total=len(order), desc=desc, unit="prompt") as progress:
            start = 0
            while start < len(order):
                chunk = order[start:start + batch_size]
                enc = tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt").to(device)
                out_of_memory = False
                if measure and measured is None and not halvings:
                    import gc

                    gc.collect()  # tensors left from training freed now, not during the batch (a peak below `held`)
                    torch.cuda.synchronize(device)
                    held = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                         eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
                except torch.cuda.OutOfMemoryError:
                    if len(chunk) == 1:
                        raise
                    out_of_memory = True
                if out_of_memory:  # outside the handler: its traceback no longer holds the failed call's tensors
                    del enc
                    torch.cuda.empty_cache()  # handed back to the runs beside this one
                    batch_size, halvings = len(chunk) // 2, halvings + 1  # half of what failed, not of a larger cap
                    continue
                start, batches = start + len(chunk), batches + 1
                progress.update(len(chunk))
                new = out[:, enc["input_ids"].shape[1]:]
                if batches == 1:  # kept apart: a first call that compiles or warms kernels shows here, not per step
                    first = {"prompts": len(chunk), "decoding_steps": int(new.shape[1]),
                             "seconds": round(time.perf_counter() - started, 3)}
                steps += new.shape[1]
                generated += int((new != tokenizer.pad_token_id).sum())
                if measure and measured is None and not halvings:  # (after an out-of-memory error: keep the halved batch)
                    # a batch that stopped early held the KV cache of fewer tokens than a later one may: scaled up to
                    # the longest prompt plus every new token
                    longest = enc["input_ids"].shape[1]
                    peak = (torch.cuda.max_memory_allocated(device) - held) * (longest + max_new_tokens) / (
                        longest + max(1, new.shape[1]))
                    grown = measured_batch(batch_size, int(peak), len(chunk), torch.cuda.mem_get_info(device)[0], share)
                    measured = {"peak_bytes_first_batch_scaled": int(peak), "prompts_first_batch": len(chunk),
                                "bytes_per_prompt": int(peak // max(1, len(chunk))), "grown_to": grown}
                    batch_size = grown
                for i, text in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True)):
                    answers[i] = text
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # what the batches reserved, handed back to the runs sharing the GPU
        for c, value in saved:
            if value is _UNSET:
                vars(c).pop("use_cache", None)
            else:
                c.use_cache = value
        tokenizer.padding_side = old_side
        model.train(was_training)
    if stats is not None:
        seconds = time.perf_counter() - started
        stats.update({"prompts": len(prompts), "batch_size": first_batch, "batch_size_last": batch_size,
                      "out_of_memory_halvings": halvings, "batches": batches, "measured": measured,
                      "decoding_steps": steps, "generated_tokens": generated, "seconds": round(seconds, 3),
                      "seconds_per_decoding_step": round(seconds / steps, 5) if steps else None,
                      "first_batch": first, "device": str(device),
                      "compile_shapes": "dynamic from the first call" if _dynamo_config(device.type) else None})
    return answers


def _last(ex, attr: str):
    """The last request's entry of a per-request list attribute (v2: template_seen, values_seen), else None."""
    values = getattr(ex, attr, None)
    return values[-1] if values else None


def score_examples(examples, outputs: list[str], **kwargs) -> dict:
    """The scores of `outputs` (one per example, for its last request), with what v2 examples carry: dialect,
    held-out combination (`templates[-1]`, the bootstrap's cluster) and, where present, template/values seen."""
    return _score(outputs, [ex.messages[-1]["content"] for ex in examples], [ex.functions[-1] for ex in examples],
                  dialects=[ex.dialects[-1] for ex in examples], clusters=[ex.templates[-1] for ex in examples],
                  template_seen=[_last(ex, "template_seen") for ex in examples],
                  values_seen=[_last(ex, "values_seen") for ex in examples], **kwargs)


def output_rows(examples, outputs: list[str]) -> list[dict]:
    """One record per item: what the JSONL of stored outputs holds."""
    from harness.arabic_norm import ast_match

    rows = []
    for ex, out in zip(examples, outputs):
        expected = ex.messages[-1]["content"]
        got, want = parse_call(out), json.loads(expected)
        row = {"id": ex.id, "split": ex.split, "function": ex.functions[-1], "dialect": ex.dialects[-1],
               "template": ex.templates[-1], "request": ex.messages[-2]["content"], "expected": expected,
               "output": out, "valid": got is not None, "exact": got == want, "ast": ast_match(got, want)}
        for attr in ("template_seen", "values_seen"):
            if _last(ex, attr) is not None:
                row[attr] = _last(ex, attr)
        rows.append(row)
    return rows


def write_outputs(path: Path, rows: list[dict]) -> dict:
    """Write rows as JSONL (UTF-8, Arabic unescaped) atomically; returns where and what was written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {"outputs_file": path.name, "outputs_lines": len(rows), "outputs_sha256": hashlib.sha256(data).hexdigest()}


def evaluate_split(model, tokenizer, examples, limit: int, max_new_tokens: int = 64, desc: str = "evaluate",
                   outputs_path: Path | None = None) -> dict:
    """Score the last model turn of each of the first `limit` examples, given the conversation before it.

    outputs_path: where to write every output as JSONL (output_rows); the eval dict then names the file
    (outputs_file, relative to the run record beside it), its line count and sha256."""
    chosen = examples[:limit]
    prompts = [ex.messages[:-1] for ex in chosen]
    stats: dict = {}
    outputs = generate_answers(model, tokenizer, prompts, max_new_tokens, desc=desc, stats=stats)
    return {**evaluation(chosen, outputs, outputs_path, tokenizer=tokenizer), "generation": stats}


def evaluation(chosen, outputs: list[str], outputs_path: Path | None = None, *, tokenizer=None, **score_kwargs) -> dict:
    """evaluate_split's dict from given outputs (no model): scores, samples, failures, outcomes, stored outputs, and
    with a tokenizer `value_tokens` (copied values with the same pieces vs re-spelled: harness.value_tokens).
    score_kwargs go to harness.scoring.score (declared, resamples, seed)."""
    from harness.output_baseline import fingerprint

    result = score_examples(chosen, outputs, **score_kwargs)
    rows = output_rows(chosen, outputs)
    result["samples"] = [{k: r[k] for k in ("request", "expected", "output")} for r in rows[:5]]
    failures: dict[str, list] = {}
    for r in rows:
        if not r["exact"] and len(failures.setdefault(r["function"], [])) < 3:
            failures[r["function"]].append({k: r[k] for k in ("request", "expected", "output")})
    result["failures"] = failures
    # Per prompt, for CHECK-OUTPUT's paired test against a recorded run (harness.output_baseline).
    result["outcomes"] = [{"id": r["id"], "function": r["function"], "cluster": r["template"], "exact": r["exact"]}
                          for r in rows]
    result["dataset_fingerprint"] = fingerprint(chosen)
    if tokenizer is not None:
        from harness.value_tokens import split

        try:
            result["value_tokens"] = split(rows, tokenizer)
        except Exception as exc:  # a diagnostic, not a score: a tokenizer without offsets must not lose the run's eval
            result["value_tokens"] = {"error": f"{type(exc).__name__}: {exc}"}
    if outputs_path is not None:
        result.update(write_outputs(outputs_path, rows))
    return result
