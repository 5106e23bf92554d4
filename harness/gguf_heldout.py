"""GGUF-HELDOUT: the exported GGUF itself, read by llama.cpp, answers the held-out requests, scored like the trained model.

Why: every other export check compares the GGUF with the merged folder it was made from (GGUF-Q8-ERROR, GGUF-LLAMACPP),
and MERGE-IS-TRAINED compares that folder's logits with the trained model's. What a user deploys is the GGUF, and what
they were told is the trained model's held-out score: this measures the GGUF on the same prompts, from the same token
ids (harness.evaluate.prompt_ids), greedy, and pairs each answer with the trained model's stored one (the reference
run's outputs-test.jsonl). A merge that drops the adapter (unsloth #869, #1929, #2142) scores the base model's ~0 here.

llama.cpp runs in child processes (never beside torch/CUDA: harness.gguf_verify.llama_outputs; started and judged by
harness.gguf_verify.llama_children), the prompts split over several children of a few threads each: a 270M model decodes
one sequence at a time, so more processes use more cores.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from harness.gguf_verify import _job, host_load, llama_children, use_mmap

# Measured on 2 cores (the embedded 270M, 16 held-out prompts of ~320 tokens, 32 new tokens each): one child of 4
# threads 15.5 s, of 2 threads 8.2 s with the shared prefix's KV cache reused (14.9 s without; the same answers).
THREADS_PER_WORKER = 2

# How many held-out prompts GGUF-HELDOUT reads: the first PROMPTS_PER_COMBINATION of each held-out combination (the
# bootstrap's cluster), in test-split order; $HARNESS_GGUF_HELDOUT_PER_COMBINATION overrides ("all": every prompt the
# reference run scored). Why 2 of the tier's 10: the drop's CI half-width is ~1.96·sqrt(d/n) for a share d of items whose
# correctness differs between the two models; the H200 readings of 2026-11-28 had d = 2/64 (1 worse, 1 better), so 448
# prompts give ±0.016, a third of the 0.05 bound (spec.checklist.GGUF_HELDOUT_MAX_DROP), and a drop of the bound's size
# still fails. All 2,240 would give ±0.007 at ~5× the llama.cpp time (~1.5 s a prompt per 2-thread child): minutes of
# the GPU tier's wall on CPU cores, for a CI the verdict does not need.
PROMPTS_PER_COMBINATION = 2


def share(value, source: str = "per_combination") -> int | None:
    """How many prompts of each held-out combination: a whole number ≥ 1 (or its text), or "all"/None for every
    prompt; ValueError naming `source` and what to write for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return None
        value = int(text) if text.isdecimal() else text  # isdigit() takes "²", which int() refuses
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}={value!r}: a whole number of prompts a held-out combination (1 or more), or 'all'")
    return value


def per_combination_default() -> int | None:
    """$HARNESS_GGUF_HELDOUT_PER_COMBINATION ("all" → None: every prompt), else PROMPTS_PER_COMBINATION."""
    env = os.environ.get("HARNESS_GGUF_HELDOUT_PER_COMBINATION", "").strip()
    return share(env, "HARNESS_GGUF_HELDOUT_PER_COMBINATION") if env else PROMPTS_PER_COMBINATION


def heldout_sample(examples, per_combination: int | None) -> list:
    """The first `per_combination` examples of each held-out combination (`templates[-1]`), in their order; every
    example with None. Deterministic: the test split's order is the generator's, fixed by its seed."""
    if per_combination is None:
        return list(examples)
    taken: dict[str, int] = {}
    sample = []
    for ex in examples:
        key = ex.templates[-1]
        if taken.get(key, 0) < per_combination:
            taken[key] = taken.get(key, 0) + 1
            sample.append(ex)
    return sample


def threads_per_worker(workers: int) -> int:
    """THREADS_PER_WORKER, fewer where `workers` children of that many would outnumber the cores: llama.cpp's threads
    wait for each other spinning, so oversubscribed they crawl. Two children of 2 threads on 2 cores answered 4 prompts
    of the tiny model in 5.3-9.4 s, one child in 0.8 s (2026-11-29)."""
    return max(1, min(THREADS_PER_WORKER, host_load()[1] // max(1, workers)))


def workers_default() -> int:
    """$HARNESS_LLAMA_WORKERS, else one child per THREADS_PER_WORKER cores (1 to 8): workers_beside with nothing
    reserved, one child at least."""
    return max(1, workers_beside(0))


def children_for(workers: int | None, prompts: int) -> int:
    """How many children answer `prompts` prompts: `workers` (workers_default() where None), never more than the
    prompts, at least one."""
    return max(1, min(workers or workers_default(), prompts or 1))


def workers_beside(reserved_threads: int) -> int:
    """Children for answering while other CPU work holds `reserved_threads` cores (the GPU tier's Q8_0 check runs its
    llama.cpp and transformers children of single_child_threads() each, the step servers warm up beside them): the rest
    of the cores, THREADS_PER_WORKER a child; 0 where fewer cores than that are left (then answer after the other
    work: spinning llama.cpp threads crawl once the cores are oversubscribed, threads_per_worker);
    $HARNESS_LLAMA_WORKERS still decides where it is set."""
    env = os.environ.get("HARNESS_LLAMA_WORKERS")
    if env:
        return int(env)
    left = host_load()[1] - max(0, reserved_threads)
    return 0 if left < THREADS_PER_WORKER else min(8, left // THREADS_PER_WORKER)


@contextmanager
def beside(measure, *args, **kwargs):
    """A Future of `measure(*args, **kwargs)` computed in a thread while the block runs other work; `.result()`
    returns it or raises what it raised (pytest's skip, an EnvironmentProblem, an AssertionError: the reader of the
    result gets them, not the block's other work). Leaving the block waits for the thread, so that nothing it
    started outlives the block into later work (the GPU tier's timed rounds); a KeyboardInterrupt while waiting (a
    second Ctrl-C) leaves at once, and the thread, a daemon, does not hold the process's exit."""
    future: Future = Future()

    def run():
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = measure(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader of the result, whatever it is
            future.set_exception(exc)
        else:
            future.set_result(result)

    thread = threading.Thread(target=run, name="beside", daemon=True)
    thread.start()
    try:
        yield future
    finally:
        while thread.is_alive():
            thread.join(0.5)


def llama_answers(path: Path, prompt_ids: list[list[int]], stop: set[int], max_new_tokens: int,
                  workers: int | None = None, timeout: int = 1800) -> list[list[int]]:
    """llama.cpp's greedy continuation (token ids, stop excluded) of each prompt, in order, from `workers` children
    (harness.gguf_verify.llama_children says whose fault a failed child is: a starved host's, the reader's or the file's)."""
    workers = children_for(workers, len(prompt_ids))
    jobs = [{**_job(path, [], prompt_ids[w::workers], stop, max_new_tokens, use_mmap()),
             "threads": threads_per_worker(workers), "reuse_prefix": True} for w in range(workers)]
    outputs = llama_children(jobs, timeout, doing="answering the held-out prompts of", claims=("GGUF-HELDOUT",),
                             overload_fix="fewer children (HARNESS_LLAMA_WORKERS=1) or fewer runs at once on this host")
    answers: list[list[int]] = [[] for _ in prompt_ids]
    for w, output in enumerate(outputs):  # the prompts were dealt round-robin: worker w had prompts w, w+workers, ...
        answers[w::workers] = output["greedy"]
    return answers


def trained_rows(outputs_jsonl: Path) -> dict[str, dict]:
    """The trained model's stored held-out outputs (harness.evaluate.output_rows), by item id."""
    rows = [json.loads(line) for line in Path(outputs_jsonl).read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def compare(examples, gguf_outputs: list[str], trained: dict[str, dict]) -> dict:
    """GGUF-HELDOUT's evidence from the GGUF's answers to `examples` and the trained model's rows for the same ids:
    both exact-match rates on the items both answered, the drop (trained − GGUF) with a 95 % bootstrap CI over held-out
    combinations, the share of identical answers, and the paired one-sided test (is the GGUF worse?)."""
    from harness.evaluate import evaluation
    from harness.output_baseline import cluster_paired
    from harness.scoring import cluster_bootstrap

    scored = evaluation(examples, gguf_outputs)
    gguf = {o["id"]: o for o in scored["outcomes"]}
    shared = [ex.id for ex in examples if ex.id in trained]
    answered = {ex.id for ex in examples}
    if not shared:
        return {"prompts": 0, "reason": "no held-out item of the trained model's outputs was answered by the GGUF"}
    by_id = dict(zip((ex.id for ex in examples), gguf_outputs))
    drops = [int(trained[i]["exact"]) - int(gguf[i]["exact"]) for i in shared]
    clusters = [gguf[i]["cluster"] for i in shared]
    ci = cluster_bootstrap(drops, clusters, seed="gguf-heldout")
    n = len(shared)
    paired = cluster_paired({i: trained[i]["exact"] for i in shared}, {i: gguf[i]["exact"] for i in shared},
                            {i: gguf[i]["cluster"] for i in shared})
    differing = [i for i in shared if by_id[i] != trained[i]["output"]]
    return {
        # both ways: prompts the GGUF answered that the trained model never scored, and the reverse
        "prompts": n, "unmatched": len(examples) - n + len(set(trained) - answered),
        "gguf_exact_match": round(sum(gguf[i]["exact"] for i in shared) / n, 6),
        "trained_exact_match": round(sum(trained[i]["exact"] for i in shared) / n, 6),
        "exact_match_drop": round(sum(drops) / n, 6),
        "exact_match_drop_ci95": list(ci[0]) if ci else None,
        "answer_agreement": round(1 - len(differing) / n, 6),
        "gguf_valid_json": scored.get("json_valid_rate"),
        "paired": {k: paired[k] for k in ("method", "clusters", "clusters_worse", "clusters_better", "worse", "better",
                                          "p_value")},
        "differences": [{"request": trained[i]["request"], "expected": trained[i]["expected"],
                         "trained": trained[i]["output"], "gguf": by_id[i]} for i in differing[:5]],
    }


def heldout_facts(gguf_path: Path, checkpoint: Path, examples, outputs_jsonl: Path, max_new_tokens: int = 64,
                  out_path: Path | None = None, per_combination: int | None | str = "default",
                  workers: int | None = None) -> dict:
    """GGUF-HELDOUT's measurement: the GGUF at `gguf_path` (exported from `checkpoint`, whose tokenizer builds the
    prompts) answers `examples` (heldout_sample's share of them: `per_combination`, by default
    per_combination_default()); compared with the trained model's outputs in `outputs_jsonl` for the same items.
    `out_path`: where to store every GGUF answer (JSONL rows as harness.evaluate.output_rows). `workers`: llama.cpp
    children (default workers_default(); workers_beside() where other work shares the cores)."""
    from harness.evaluate import output_rows, prompt_ids, write_outputs
    from harness.tokenizer import load_tokenizer

    per_combination = per_combination_default() if per_combination == "default" else share(per_combination)
    offered_ids = {ex.id for ex in examples}
    offered = len(examples)
    examples = heldout_sample(examples, per_combination)
    trained = trained_rows(outputs_jsonl)
    sampled = {ex.id for ex in examples}
    # rows of offered items left out of the sample are not "unmatched"; rows of items never offered still are (the
    # trained model scored prompts this GGUF was not asked)
    trained_in_sample = {i: r for i, r in trained.items() if i in sampled or i not in offered_ids}

    tokenizer = load_tokenizer(str(checkpoint))
    stop = {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    started = time.perf_counter()
    ids = prompt_ids(tokenizer, [ex.messages[:-1] for ex in examples])
    children = children_for(workers, len(ids))  # as llama_answers counts them, for the facts' reader line
    tokens = llama_answers(gguf_path, ids, stop, max_new_tokens, workers=children)
    outputs = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    facts = compare(examples, outputs, trained_in_sample)
    facts["sample"] = {"per_combination": per_combination if per_combination is not None else "all", "prompts": len(examples), "of": offered,
                       "combinations": len({ex.templates[-1] for ex in examples}),
                       "rule": (f"the first {per_combination} of each held-out combination, in test-split order"
                                if per_combination else "every prompt the reference run scored")}
    facts["seconds"] = round(time.perf_counter() - started, 1)
    facts["reader"] = f"llama.cpp (llama-cpp-python), {children} children × {threads_per_worker(children)} threads"
    if out_path is not None:
        facts.update(write_outputs(out_path, output_rows(examples, outputs)))
    return facts
