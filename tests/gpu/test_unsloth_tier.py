"""The GPU tier's reference fine-tune: the handbook's pipeline through Unsloth on a CUDA GPU, end to end.

The run itself is queued at session start in the background (tests/gpu/conftest.py); the tests here read
its record and its exports.
"""

import json
import time

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def e2e(gpu_runs, run_extras):
    """The reference fine-tune's run record: `python -m harness finetune --backend unsloth`, run in the background."""
    outcome = gpu_runs.queue.wait("e2e")["e2e"]
    assert outcome.startswith("complete"), f"the reference fine-tune failed ({gpu_runs.e2e_dir}/log.txt): {outcome}"
    record = json.loads((gpu_runs.e2e_dir / "run.json").read_text())
    if gpu_runs.base_eval_apart and "base_eval" not in record:  # scored beside it (tests/gpu/conftest.py)
        record = with_base_eval(record, gpu_runs)
    run_extras["finetune"] = {k: record.get(k) for k in ("model", "backend", "steps", "phases", "throughput", "eval",
                                                          "base_eval", "base_eval_run", "val_loss", "memory",
                                                          "artifacts")}
    run_extras["finetune"]["shared_gpu_with"] = f"up to {gpu_runs.slots - 1} other runs (its step times are not speed figures)"
    log = gpu_runs.e2e_dir / "log.txt"  # what torch's compiler did again in it (the first steps' time: issue #13)
    if log.is_file():
        from harness.record_facts import dynamo_recompiles

        run_extras["finetune"]["dynamo"] = dynamo_recompiles(log.read_text(errors="replace"))
    return record


def with_base_eval(record: dict, gpu_runs) -> dict:
    """The reference run's record with its companion base evaluation merged in (harness.record_facts.merge_base_eval)."""
    from harness.record_facts import base_eval_dir, merge_base_eval

    outcome = gpu_runs.queue.wait("e2e-base")["e2e-base"]
    assert outcome.startswith("complete"), \
        f"the base model's evaluation failed ({base_eval_dir(gpu_runs.e2e_dir)}/log.txt): {outcome}"
    return merge_base_eval(record, gpu_runs.e2e_dir)


@pytest.mark.uses_runs("e2e")
@pytest.mark.gpu_phase(1)
@pytest.mark.claim("E2E-REFERENCE", "RECIPE-FIDELITY", "CHECK-OUTPUT", "MASK-USER-TURNS", "CHECK-OVERFIT", "LR-COSINE")
def test_reference_finetune_end_to_end(e2e, certify):
    """Unsloth 4-bit + LoRA + SFT with train_on_responses_only and the cosine schedule, then held-out eval and export."""
    from harness import output_baseline, record_facts

    certify("RECIPE-FIDELITY", {**e2e["fidelity"], "backend": "unsloth"}, "gpu", soft=True)
    fed = e2e["masking_in_batches"]
    certify("MASK-USER-TURNS", {**e2e["mask_check"], "batches_fed": fed["batches"], "batches_fed_counts": fed,
                                "masked_positions_trained_in_batches": fed["contributing_masked"] + fed["masked_trainable"]},
            "gpu", soft=True)
    e = e2e["eval"]
    certify("CHECK-OUTPUT", {**{k: e[k] for k in ("prompts", "json_valid_rate", "action_rate", "exact_match", "per_function")},
                             "base_exact_match": e2e["base_eval"]["exact_match"], "goal_exact_match": 0.95,
                             "paired": output_baseline.paired(e)}, "gpu", soft=True)
    certify("CHECK-OVERFIT", record_facts.overfit(e2e), "gpu", soft=True)
    certify("LR-COSINE", record_facts.lr(e2e), "gpu", soft=True)
    certify("E2E-REFERENCE", {**record_facts.e2e(e2e, "gemma3-270m", "unsloth"),
                              "export_recorded": record_facts.gguf_exists(e2e)}, "gpu", soft=True)
    certify.check()


@pytest.mark.uses_runs("e2e")
@pytest.mark.gpu_phase(1)
@pytest.mark.claim("MERGE-IS-TRAINED")
def test_the_merged_checkpoint_is_the_trained_model(e2e, certify):
    """Unsloth's merged 16-bit folder (what both GGUF exports are made from) against the in-memory 4-bit adapter model
    that was trained and evaluated: logits on held-out prompts (harness.merge_check, run by the fine-tune itself)."""
    from harness.merge_check import METHOD

    measured = e2e.get("merge_check") or {"error": "the run recorded no merge_check (no merged folder)"}
    if not measured.get("error") and measured.get("method", 1) < METHOD:  # a reference run reused from an older harness
        measured = {"error": f"the reference run's record holds merge_check method {measured.get('method', 1)}, before "
                             f"the weight check (method {METHOD}): run the fine-tune again (an empty $HARNESS_E2E_OUT)"}
    certify("MERGE-IS-TRAINED", measured, "gpu")


HELDOUT_TEST = "test_the_exported_gguf_answers_like_the_trained_model"


class HeldoutMeasurement:
    """GGUF-HELDOUT's measurement, either started beside the Q8_0 check (start_beside) or taken when its test asks
    (facts). Beside: both are CPU work on a GPU runner whose GPU is idle then, 75.6 and 52.6 s one after the other on
    an H200 at 21fbd03, 75.8 s together at b46d08b (reports/examples/h200-2026-11-29-gguf-checks-beside-s18). Whatever
    the measurement raises (a skip, an environment problem, a failed assertion) is raised in the held-out test, never
    in the Q8_0 check; the answers are llama.cpp's greedy ones whenever they are computed."""

    def __init__(self, e2e: dict, dataset, stack):
        self.e2e, self.dataset, self.stack = e2e, dataset, stack
        self.future, self.how = None, "after the Q8_0 check (or alone)"

    def start_beside(self) -> None:
        from harness.gguf_heldout import beside, workers_beside
        from harness.gguf_verify import single_child_threads

        # the Q8_0 check's child (llama.cpp, then the transformers reference) and the two step servers' warm-up
        workers = workers_beside(single_child_threads() + 2)
        if workers and self.future is None:
            self.future = self.stack.enter_context(beside(heldout_facts_of, self.e2e, self.dataset, workers))
            self.how = f"beside the Q8_0 check, {workers} llama.cpp children"

    def facts(self) -> dict:
        return self.future.result() if self.future is not None else heldout_facts_of(self.e2e, self.dataset)


@pytest.fixture(scope="module")
def gguf_heldout(e2e, dataset):
    from contextlib import ExitStack

    with ExitStack() as stack:  # its end waits for a measurement started beside (harness.gguf_heldout.beside)
        yield HeldoutMeasurement(e2e, dataset, stack)


def heldout_test_runs_later(item) -> bool:
    """Whether this module's held-out test is selected after `item` (a GPU fault run orders its tests otherwise:
    there the held-out test may have run already, and nobody would read a measurement started now)."""
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    return any(getattr(i, "originalname", i.name) == HELDOUT_TEST and i.path == item.path for i in later)


def heldout_facts_of(e2e: dict, dataset, workers: int | None = None) -> dict:
    """Unsloth's Q8_0 GGUF in llama.cpp answers the held-out prompts the reference run scored (the first two of each
    held-out combination: harness.gguf_heldout.PROMPTS_PER_COMBINATION says why two); paired with the trained model's
    stored answers (outputs-test.jsonl)."""
    from pathlib import Path

    from harness.gguf_heldout import heldout_facts, trained_rows
    from harness.gguf_verify import llamacpp_loads
    from harness.output_baseline import fingerprint
    from harness.record_facts import unsloth_gguf

    art, out_dir = e2e.get("artifacts") or {}, Path(e2e["out_dir"])
    gguf = unsloth_gguf(e2e)  # a converter missing on this runner: a skip with the fix, not a failure
    outputs = out_dir / e2e["eval"]["outputs_file"]
    scored = trained_rows(outputs)
    examples = [ex for ex in dataset["test"] if ex.id in scored]
    # ids alone could name other prompts (another dataset build numbers its items the same way)
    assert fingerprint(examples) == e2e["eval"]["dataset_fingerprint"], "the reference run scored other prompts"
    # whether this runner maps the file or must read it (llamacpp_loads keeps what worked for the children below):
    # beside the Q8_0 check this measurement cannot count on that check's load having run first
    loaded, why = llamacpp_loads(gguf)
    assert loaded, why
    return heldout_facts(gguf, Path(art["merged"]), examples, outputs, e2e["recipe"]["max_new_tokens"],
                         out_path=out_dir / "outputs-test-gguf.jsonl", workers=workers)


@pytest.mark.uses_runs("e2e")
@pytest.mark.gpu_phase(1)
@pytest.mark.claim("GGUF-Q8-EXPORT", "GGUF-Q8-ERROR", "GGUF-LLAMACPP")
def test_unsloth_q8_0_export_offline_is_verified(request, e2e, dataset, certify, run_extras, gguf_heldout):
    """save_pretrained_gguf(Q8_0) with the vendored llama.cpp: layout, error bound, same model as our exporter, llama.cpp."""
    from pathlib import Path

    from harness.corpus import tokenizer_corpus
    from harness.gguf_compare import compare, summary
    from harness.gguf_verify import error_vs_checkpoint, layout, llamacpp_checks, llamacpp_loads, read

    from harness.record_facts import unsloth_gguf

    if heldout_test_runs_later(request.node):
        gguf_heldout.start_beside()
    art = e2e.get("artifacts") or {}
    unsloth_file = unsloth_gguf(e2e)  # a converter missing on this runner: a skip with the fix, not a failure
    ours, merged = Path(art["gguf"]), Path(art["merged"])
    # where this test's time goes, in the report's extras: 138.2 s on an H200 at a7fde14, 117.8 of them llama.cpp and
    # the transformers reference (reports/examples/h200-2026-11-29-gpu-tier-s17; the reference now runs in a child)
    seconds, clock = {}, time.perf_counter()

    def lap(name):
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    comparison = compare(unsloth_file, ours)  # tensors and metadata; llama.cpp below, in child processes first
    lap("compare the two exports")
    run_extras["gguf_exporters"] = {"metadata": comparison["metadata"], "tensors": {
        k: v for k, v in comparison["tensors"].items() if k != "value_differences"}, "seconds": seconds,
        "held_out_measured": gguf_heldout.how}  # its llama.cpp children may share the cores with this test's
    reader = read(unsloth_file)
    certify("GGUF-Q8-EXPORT", {"exporter": "unsloth save_pretrained_gguf (vendored llama.cpp)",
                               "seconds": art.get("gguf_unsloth_seconds"), **layout(reader),
                               **summary(comparison)}, "unsloth", soft=True)
    lap("read and layout")
    certify("GGUF-Q8-ERROR", error_vs_checkpoint(reader, merged), "gpu", soft=True)
    lap("error against the merged checkpoint")
    from harness.doctor import EnvironmentProblem

    try:  # each load in a child process; a reader that fails on Google's own GGUF too raises EnvironmentProblem
        loads = {path.name: llamacpp_loads(path) for path in (unsloth_file, ours)}
    except EnvironmentProblem:
        certify.check()  # the exporters' verdicts above stand; then the skip says it is the environment
        raise
    lap("llama.cpp loads both")
    if loads[unsloth_file.name][0]:
        prompts = [ex.messages[:-1] for ex in dataset["test"][:20]]
        sides = {}
        certify("GGUF-LLAMACPP", llamacpp_checks(unsloth_file, merged, prompts, tokenizer_corpus(), timings=sides),
                "gpu", soft=True)
        lap("llama.cpp tokens and greedy against transformers")
        seconds["of which"] = sides
    else:  # a reader healthy on Google's file fails on Unsloth's: that is the file's fault
        certify("GGUF-LLAMACPP", {"loaded": False, "token_strings": 0, "token_mismatches": None,
                                  "reason": loads[unsloth_file.name][1]}, "gpu", soft=True)
    certify.check()
    assert loads[ours.name][0], f"llama.cpp decodes Google's GGUF but not this project's export: {loads[ours.name][1]}"


@pytest.mark.uses_runs("e2e")
@pytest.mark.gpu_phase(1)
@pytest.mark.claim("GGUF-HELDOUT")
def test_the_exported_gguf_answers_like_the_trained_model(gguf_heldout, certify, run_extras):
    """Unsloth's Q8_0 GGUF in llama.cpp answers the held-out prompts the reference run scored, paired with the trained
    model's stored answers: the deployed file's score, not the merged folder's (measured beside the Q8_0 check where
    both run: HeldoutMeasurement)."""
    facts = gguf_heldout.facts()
    run_extras["gguf_heldout"] = {**{k: v for k, v in facts.items() if k != "differences"}, "measured": gguf_heldout.how}
    certify("GGUF-HELDOUT", facts, "gpu")
