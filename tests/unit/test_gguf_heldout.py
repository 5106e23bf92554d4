"""GGUF-HELDOUT (issue #15, blind spot 1): the deployed GGUF's held-out answers paired with the trained model's.

The check on the shapes of evidence the bug classes produce (a merge that drops the adapter: the GGUF is the base model;
a merge that costs accuracy; a faithful export), the pairing on planted outputs, and llama.cpp's answers split over
child processes coming back in the prompts' order."""

import json
import sys
from types import SimpleNamespace

import pytest

import spec
from spec.checklist import GGUF_HELDOUT_MAX_DROP
from spec.core import evaluate

CLAIM = spec.CLAIMS["GGUF-HELDOUT"]
CALL = '{"action": "set_lights", "room": "kitchen", "state": "on"}'
WRONG = '{"action": "set_lights", "room": "bedroom", "state": "on"}'


def _examples(n):
    return [SimpleNamespace(id=f"test-{i:05d}", split="test", functions=["set_lights"], dialects=["msa"],
                            templates=[f"combo-{i // 4}"], template_seen=[False], values_seen=[False],
                            messages=[{"role": "user", "content": f"request {i}"}, {"role": "assistant", "content": CALL}])
            for i in range(n)]


def _trained(examples, right):
    return {ex.id: {"id": ex.id, "request": f"request {i}", "expected": CALL, "output": CALL if right(i) else WRONG,
                    "exact": right(i)} for i, ex in enumerate(examples)}


def _compare(gguf_right, trained_right, n=200):
    from harness.gguf_heldout import compare

    examples = _examples(n)
    return compare(examples, [CALL if gguf_right(i) else WRONG for i in range(n)], _trained(examples, trained_right))


def test_a_faithful_export_passes():
    facts = _compare(lambda i: i % 10 != 0, lambda i: i % 10 != 0)
    assert facts["answer_agreement"] == 1.0 and facts["exact_match_drop"] == 0.0 and facts["paired"]["worse"] == 0
    outcome = evaluate(CLAIM, facts, "gpu")
    assert (outcome.verdict, outcome.violations, outcome.regression) == ("pass", [], False)


def test_a_merge_that_drops_the_adapter_fails():
    """The GGUF is the base model (unsloth #869, #1929, #2142): it answers nothing right where the trained model scored
    0.9."""
    facts = _compare(lambda i: False, lambda i: i % 10 != 0)
    assert facts["gguf_exact_match"] == 0.0 and facts["trained_exact_match"] == 0.9
    assert facts["paired"]["p_value"] < 0.001
    outcome = evaluate(CLAIM, facts, "gpu")
    assert outcome.verdict == "fail" and outcome.regression


def test_an_export_that_loses_a_tenth_is_not_the_handbooks_model():
    """A merge that keeps the adapter but costs ten points (e.g. a quantization term folded in): past the tolerance,
    read as corrected, which the recorded `pass` makes a regression."""
    facts = _compare(lambda i: i % 5 != 0, lambda i: i % 10 != 0)  # 0.8 vs 0.9, every loss in a different item
    assert facts["exact_match_drop"] == pytest.approx(0.1)
    assert facts["exact_match_drop_ci95"][1] > GGUF_HELDOUT_MAX_DROP
    outcome = evaluate(CLAIM, facts, "gpu")
    assert outcome.verdict == "corrected" and outcome.regression


def test_a_trained_answer_the_gguf_never_gave_is_unmatched():
    from harness.gguf_heldout import compare

    examples = _examples(8)
    facts = compare(examples[:7], [CALL] * 7, _trained(examples, lambda i: True))
    assert facts["unmatched"] == 1 and evaluate(CLAIM, facts, "gpu").regression


def test_nothing_paired_is_a_failure_not_a_pass():
    from harness.gguf_heldout import compare

    examples = _examples(8)
    facts = compare(examples, [CALL] * 8, {})
    assert facts["prompts"] == 0
    assert evaluate(CLAIM, facts, "gpu").verdict == "fail"


def test_trained_rows_read_the_stored_outputs(tmp_path):
    from harness.evaluate import output_rows, write_outputs
    from harness.gguf_heldout import trained_rows

    examples = _examples(3)
    write_outputs(tmp_path / "outputs-test.jsonl", output_rows(examples, [CALL, WRONG, CALL]))
    rows = trained_rows(tmp_path / "outputs-test.jsonl")
    assert [rows[ex.id]["exact"] for ex in examples] == [True, False, True]
    assert json.loads(rows["test-00001"]["output"])["room"] == "bedroom"


def test_answers_from_several_llama_children_come_back_in_order(llama_cpp_reader, tiny_gguf, tokenizer, dataset):
    """Prompts are dealt to the children round-robin; each answer must land at its prompt's index, and a child that
    reuses the previous prompt's KV cache (a different previous prompt with 2 children) answers the same."""
    from harness.evaluate import prompt_ids
    from harness.gguf_heldout import llama_answers

    ids = prompt_ids(tokenizer, [ex.messages[:-1] for ex in dataset["test"][:4]])
    stop = {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    one = llama_answers(tiny_gguf, ids, stop, max_new_tokens=4, workers=1)
    assert len(one) == 4 and all(len(a) <= 4 for a in one) and len({tuple(a) for a in one}) > 1
    assert llama_answers(tiny_gguf, ids, stop, max_new_tokens=4, workers=2) == one


def test_answers_of_uneven_shards_come_back_in_order(monkeypatch, tmp_path):
    """7 prompts over 3 children (3, 2 and 2 prompts): each child echoes its prompts as answers, which must come back
    at their prompts' indices."""
    import sys

    from harness import gguf_verify
    from harness.gguf_heldout import llama_answers

    echo = "import json, sys; job = json.load(sys.stdin); print(json.dumps({'greedy': job['prompt_ids']}))"
    monkeypatch.setattr(gguf_verify, "_child_command", lambda: [sys.executable, "-I", "-c", echo])
    ids = [[i, i] for i in range(7)]
    assert llama_answers(tmp_path / "x.gguf", ids, set(), 4, workers=3) == ids


def test_the_sample_takes_the_first_prompts_of_every_held_out_combination(dataset):
    """The GPU tier's 2,240 held-out prompts (224 combinations × 10) → 448, two of each, in the split's order."""
    from collections import Counter

    from harness.gguf_heldout import PROMPTS_PER_COMBINATION, heldout_sample

    test = dataset["test"]
    sample = heldout_sample(test, PROMPTS_PER_COMBINATION)
    per = Counter(ex.templates[-1] for ex in sample)
    assert len(per) == len({ex.templates[-1] for ex in test}) and set(per.values()) == {PROMPTS_PER_COMBINATION}
    position = {ex.id: i for i, ex in enumerate(test)}
    assert [position[ex.id] for ex in sample] == sorted(position[ex.id] for ex in sample)
    assert heldout_sample(test, PROMPTS_PER_COMBINATION) == sample  # the same prompts every run
    assert heldout_sample(test, None) == list(test)
    # the GPU fault runs score the first 64 prompts, 64 different combinations: the sample keeps all of them
    assert heldout_sample(test[:64], PROMPTS_PER_COMBINATION) == list(test[:64])


@pytest.mark.parametrize("value, expected", [("", 2), ("all", None), ("ALL", None), ("5", 5)])
def test_the_share_read_comes_from_the_environment(monkeypatch, value, expected):
    from harness.gguf_heldout import per_combination_default

    monkeypatch.setenv("HARNESS_GGUF_HELDOUT_PER_COMBINATION", value)
    assert per_combination_default() == expected


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_share_that_is_not_a_count_says_what_to_write(monkeypatch, value):
    from harness.gguf_heldout import per_combination_default

    monkeypatch.setenv("HARNESS_GGUF_HELDOUT_PER_COMBINATION", value)
    with pytest.raises(ValueError, match="'all'"):
        per_combination_default()


@pytest.mark.parametrize("value, expected", [(None, None), ("all", None), (3, 3), ("3", 3)])
def test_one_reader_of_the_share_for_the_argument_and_the_environment(value, expected):
    from harness.gguf_heldout import share

    assert share(value) == expected


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "two", "", "²"])
def test_a_share_argument_that_is_not_a_count_is_refused(value):
    from harness.gguf_heldout import share

    with pytest.raises(ValueError, match="per_combination=.*'all'"):
        share(value)


def _sampled_compare(lost_every, combinations=224, per=10):
    """compare() on heldout_sample's share of a split like the tier's. The trained model is wrong on every item ≡ 3
    (mod 10); the GGUF differs from it both ways, worse on items ≡ 0 (mod 40) and better on items ≡ 13 (mod 40): a
    share of 1/20 differing (the H200 readings had 2 of 64, 1/32), and wrong besides on every `lost_every`-th item."""
    from harness.gguf_heldout import PROMPTS_PER_COMBINATION, compare, heldout_sample

    examples = [SimpleNamespace(**{**vars(ex), "templates": [f"combo-{i % combinations}"]})
                for i, ex in enumerate(_examples(combinations * per))]
    trained_right = lambda i: i % 10 != 3  # noqa: E731
    differs = lambda i: i % 40 in (0, 13)  # noqa: E731
    gguf_right = lambda i: (trained_right(i) != differs(i)) and not (lost_every and i % lost_every == 1)  # noqa: E731
    trained = _trained(examples, trained_right)
    sample = heldout_sample(examples, PROMPTS_PER_COMBINATION)
    index = {ex.id: i for i, ex in enumerate(examples)}
    outputs = [CALL if gguf_right(index[ex.id]) else WRONG for ex in sample]
    return compare(sample, outputs, {ex.id: trained[ex.id] for ex in sample})


def test_the_sample_passes_a_faithful_export_and_fails_one_that_loses_the_bounds_worth():
    """The sample's power, planted: with answers that differ both ways (as measured), the 448 prompts pass a faithful
    GGUF with room (CI's upper end well under the bound), and a GGUF wrong besides on one item in 14 (a drop of 0.0625
    on the sample: losses on items the trained model got wrong do not count) does not pass."""
    faithful = _sampled_compare(lost_every=0)
    assert faithful["prompts"] == 448 and faithful["exact_match_drop_ci95"][1] < GGUF_HELDOUT_MAX_DROP / 2
    assert evaluate(CLAIM, faithful, "gpu").verdict == "pass"
    lossy = _sampled_compare(lost_every=14)
    assert lossy["exact_match_drop"] > GGUF_HELDOUT_MAX_DROP
    assert evaluate(CLAIM, lossy, "gpu").verdict != "pass"


@pytest.mark.parametrize("cores, workers, threads", [(2, 1, 2), (2, 2, 1), (16, 8, 2), (16, 4, 2), (3, 2, 1), (1, 4, 1)])
def test_the_children_never_outnumber_the_cores_with_their_threads(monkeypatch, cores, workers, threads):
    """llama.cpp's threads spin while they wait for each other: 2 children × 2 threads on 2 cores took 5-9 s for what
    one child did in 0.8 s."""
    from harness import gguf_heldout

    monkeypatch.setattr(gguf_heldout, "host_load", lambda: (0.0, cores))
    assert gguf_heldout.threads_per_worker(workers) == threads


@pytest.mark.parametrize("cores, reserved, env, workers", [(16, 6, None, 5), (64, 6, None, 8), (8, 6, None, 1),
                                                        (7, 6, None, 0), (2, 6, None, 0), (16, 6, "3", 3)])
def test_children_beside_other_work_take_the_cores_it_leaves(monkeypatch, cores, reserved, env, workers):
    """The GPU tier's held-out children answer beside the Q8_0 check's child (4 threads) and the warming step servers:
    on a 16-core H200 runner 5 children of 2 threads; none (answer afterwards) where fewer than 2 cores are left;
    $HARNESS_LLAMA_WORKERS still decides."""
    from harness import gguf_heldout

    monkeypatch.setattr(gguf_heldout, "host_load", lambda: (0.0, cores))
    if env is None:
        monkeypatch.delenv("HARNESS_LLAMA_WORKERS", raising=False)
    else:
        monkeypatch.setenv("HARNESS_LLAMA_WORKERS", env)
    assert gguf_heldout.workers_beside(reserved) == workers
    if env is None and workers:  # the others' cores are left alone
        assert workers * gguf_heldout.threads_per_worker(workers) <= cores - reserved


def test_a_measurement_beside_gives_its_result_and_its_exceptions_to_the_reader():
    """tests/gpu/test_unsloth_tier.py measures GGUF-HELDOUT in a thread during the Q8_0 check: what the measurement
    raises (a skip for a missing converter, an environment problem, a failed assertion) must reach the held-out test,
    and never the Q8_0 check that runs meanwhile; the block's end waits for the thread."""
    import threading

    from harness.gguf_heldout import beside

    started, release = threading.Event(), threading.Event()

    def measure(x):
        started.set()
        release.wait(5)
        return {"x": x}

    with beside(measure, 3) as future:
        assert started.wait(5)  # it runs while the block does other work
        assert not future.done()
        release.set()
        assert future.result(5) == {"x": 3}

    def skipped():
        pytest.skip("llama.cpp's converter is missing on this runner")

    with beside(skipped) as future:
        pass  # the block's own work is not interrupted
    assert future.done()
    with pytest.raises(pytest.skip.Exception, match="converter is missing"):
        future.result()

    def failing():
        raise AssertionError("the reference run scored other prompts")

    with beside(failing) as future:
        pass
    with pytest.raises(AssertionError, match="scored other prompts"):
        future.result()


def _tier_module():
    """tests/gpu/test_unsloth_tier.py, imported by path (its tests skip on the CPU; its helpers run here)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "gpu" / "test_unsloth_tier.py"
    spec_ = importlib.util.spec_from_file_location("unsloth_tier_under_test", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module, path


def test_the_held_out_measurement_starts_beside_only_where_its_test_comes_later():
    """A GPU fault run orders its tests otherwise (tests/faults/faults_gpu.py: the held-out test before the Q8_0
    check): a measurement started then would run unread, twice over."""
    tier, path = _tier_module()
    other = path.with_name("test_blind_spots_gpu.py")

    def item(name, where=path):
        return SimpleNamespace(originalname=name, name=name, path=where, session=session)

    session = SimpleNamespace(items=[])
    q8, held, elsewhere = item("test_unsloth_q8_0_export_offline_is_verified"), item(tier.HELDOUT_TEST), item("x", other)
    session.items[:] = [q8, held]
    assert tier.heldout_test_runs_later(q8)
    session.items[:] = [held, elsewhere, q8]
    assert not tier.heldout_test_runs_later(q8)
    session.items[:] = [q8]
    assert not tier.heldout_test_runs_later(q8)
    session.items[:] = [q8, item(tier.HELDOUT_TEST, other)]  # a test of that name in another module is not it
    assert not tier.heldout_test_runs_later(q8)


@pytest.mark.parametrize("workers", [5, 0])
def test_the_held_out_measurement_is_read_once_beside_or_taken_when_asked(monkeypatch, workers):
    """Started beside (cores to spare): the held-out test reads what the thread measured, with its exception; with no
    cores to spare it measures when its test asks, as before."""
    from contextlib import ExitStack

    import harness.gguf_heldout as gh

    tier, _ = _tier_module()
    calls = []

    def measure(e2e, dataset, workers=None):
        calls.append(workers)
        if e2e == "broken":
            raise AssertionError("the reference run scored other prompts")
        return {"workers": workers}

    monkeypatch.setattr(tier, "heldout_facts_of", measure)
    monkeypatch.setattr(gh, "workers_beside", lambda reserved: workers)
    for e2e in ("run", "broken"):
        calls.clear()
        with ExitStack() as stack:
            measurement = tier.HeldoutMeasurement(e2e, None, stack)
            measurement.start_beside()
            measurement.start_beside()  # once only
            assert calls == [] or workers  # with no cores to spare nothing ran yet
            if e2e == "broken":
                with pytest.raises(AssertionError, match="scored other prompts"):
                    measurement.facts()
            else:
                assert measurement.facts() == {"workers": workers or None}
            assert ("beside" in measurement.how) == bool(workers)
        assert calls == [workers or None]


def test_the_transformers_reference_runs_on_a_bounded_share_of_the_cores(tiny_dir, monkeypatch):
    """hf_greedy (GGUF-LLAMACPP's reference) computes in the pytest process (Unsloth not imported): on a 64-core runner it takes at most 4
    torch threads (torch's default, every core, let two fault runs' OpenMP pools spin on one runner), and the
    process's own setting is back afterwards. Planted: without the bound it would run on the process's 8."""
    import torch

    from harness import gguf_verify

    monkeypatch.setenv("HARNESS_MEASUREMENT_CACHE", "0")
    monkeypatch.setattr(gguf_verify, "host_load", lambda: (0.0, 64))
    seen = []
    real_generate = __import__("transformers").GenerationMixin.generate

    def generate(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr("transformers.GenerationMixin.generate", generate)
    before = torch.get_num_threads()
    torch.set_num_threads(8)  # a process with more threads than the bound (torch's default on a big runner: every core)
    try:
        out = gguf_verify.hf_greedy(tiny_dir, [[2, 105, 2364, 107], [2, 105, 4368]], {106, 1}, 0, 3)
        assert len(out) == 2 and seen == [4, 4]
        assert torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(before)


def test_the_reference_never_gets_more_threads_than_the_process_had(tiny_dir, monkeypatch):
    """OMP_NUM_THREADS=1 (a run sharing its host) stays 1: the bound only lowers."""
    import torch

    from harness import gguf_verify

    monkeypatch.setattr(gguf_verify, "host_load", lambda: (0.0, 64))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with gguf_verify.torch_threads(4):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_llama_child_gets_the_cores_the_sessions_background_runs_leave(monkeypatch):
    """llama.cpp's threads spin at each step's barrier: a child gets single_child_threads() less the cores this
    process's declared background runs hold now (the CPU session's tiny fine-tune), one at least, and llama_outputs
    hands that to its child. Planted: ignoring the held cores gives 2 threads beside the tiny fine-tune on 2 cores."""
    from pathlib import Path

    from harness import gguf_verify, run_queue

    for cores, held, threads in ((2, 0, 2), (2, 1, 1), (2, 3, 1), (16, 0, 4), (16, 1, 4), (16, 14, 2)):
        monkeypatch.setattr(gguf_verify, "host_load", lambda cores=cores: (0.0, cores))
        monkeypatch.setattr(run_queue, "cpu_threads_held", lambda held=held: held)
        assert gguf_verify.llama_child_threads() == threads, (cores, held)
    jobs = []
    monkeypatch.setattr(gguf_verify, "llama_children",
                        lambda given, timeout, **kw: jobs.extend(given) or [{"tokens": [], "greedy": []}])
    monkeypatch.setattr(gguf_verify, "host_load", lambda: (0.0, 2))
    monkeypatch.setattr(run_queue, "cpu_threads_held", lambda: 1)
    gguf_verify.llama_outputs(Path("x.gguf"), [], [[2]], set(), 1)
    assert [job["threads"] for job in jobs] == [1]


def test_where_unsloth_is_imported_the_reference_is_computed_in_a_child_process(tiny_dir, monkeypatch):
    """Unsloth's import rewrites transformers' Gemma 3 code for the whole process (the GPU tier's pytest process): the
    reference is then computed in a fresh process, and gives what the in-process reference gives. Planted: a process
    that has imported Unsloth (a module of that name) must not run the reference itself."""
    import types

    from harness import gguf_verify

    monkeypatch.setenv("HARNESS_MEASUREMENT_CACHE", "0")
    prompts, stop = [[2, 105, 2364, 107], [2, 105, 4368]], {106, 1}
    here = gguf_verify.hf_greedy(tiny_dir, prompts, stop, 0, 3)
    assert not gguf_verify.model_code_patched()
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))
    assert gguf_verify.model_code_patched()
    in_process = []
    monkeypatch.setattr(gguf_verify, "_hf_side", lambda job: in_process.append(job) or [])
    assert gguf_verify.hf_greedy(tiny_dir, prompts, stop, 0, 3) == here  # the child imports the real _hf_side
    assert in_process == []


def test_a_gemma3_forward_patched_without_unsloth_still_sends_the_reference_to_a_child(monkeypatch):
    """A Gemma 3 class whose forward is not transformers' own counts as patched model code, Unsloth imported or not.
    Planted: the attention's forward replaced by a function of this module."""
    from transformers.models.gemma3 import modeling_gemma3

    from harness import gguf_verify

    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    assert not gguf_verify.model_code_patched()

    def forward(self, *args, **kwargs):
        raise AssertionError("never called")

    monkeypatch.setattr(modeling_gemma3.Gemma3Attention, "forward", forward)
    assert gguf_verify.model_code_patched()


def test_a_reference_child_that_hangs_or_prints_nothing_is_named(monkeypatch):
    """The child's failures say it was the transformers reference: past its time, or no answers on its last line."""
    from harness import gguf_verify

    job = {"checkpoint": "/nowhere"}
    monkeypatch.setattr(gguf_verify, "_child_command", lambda: [sys.executable, "-c", "import sys; sys.stdin.read()"])
    with pytest.raises(RuntimeError, match="printed no answers"):
        gguf_verify._hf_child(job)
    monkeypatch.setattr(gguf_verify, "_child_command", lambda: [sys.executable, "-c", "import time; time.sleep(30)"])
    with pytest.raises(RuntimeError, match="ran past 1 s"):
        gguf_verify._hf_child(job, timeout=1)
