"""Held-out evaluation: length-sorted, left-padded batches with the KV cache give exactly the answers of one prompt
at a time, in the caller's order; every output is stored as JSONL with its scores."""

import hashlib
import json
from types import SimpleNamespace

import pytest

from harness.evaluate import evaluation, length_order

SYSTEM = {"role": "system", "content": "You are a function-calling assistant. Answer with one JSON object."}
REQUESTS = ["شغل الليت", "اضبط المنبه الساعة ٧:٣٠ الصبح من فضلك",
            "ابعت رسالة لسهى حداد قول لها إني هتأخر شوية النهارده عشان الزحمة في الطريق كانت كبيرة جدا",
            "كم الطقس بكرة في الرياض", "حول ٢٥٠ دولار إلى جنيه مصري لو سمحت", "ابي اروح دبي",
            "ذكرني أشتري الحليب والخبز والبيض من السوبرماركت الساعة ٦ المسا بعد الشغل الله يعافيك", "علّي الصوت"]


@pytest.mark.slow
def test_batched_greedy_answers_equal_one_by_one(tiny_dir, tokenizer):
    """8 prompts of 32-56 tokens, unsorted, in length-sorted batches of 3 (left padding up to 13 tokens) vs one at a
    time: the same 16 greedy tokens each, returned in the caller's order. fp32 on the CPU: the tiny model's random
    weights give no near-ties among these prompts' argmaxes (a tie broken differently by the padded and unpadded
    kernels could flip a token; the prompts are fixed, so the test is deterministic). It is sensitive: with an
    all-ones attention mask (padding attended to) the batched answers differ. The model's use_cache=False (as
    training leaves it) is restored after generation, which itself ran with the cache."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.evaluate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    model.config.use_cache = False
    prompts = [[SYSTEM, {"role": "user", "content": r}] for r in REQUESTS]
    lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"])
               for p in prompts]
    assert max(lengths) - min(lengths) > 15 and lengths != sorted(lengths, reverse=True), "padding and reordering untested"
    calls = []
    generate = model.generate
    model.generate = lambda **kw: calls.append(kw["use_cache"]) or generate(**kw)
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=16, batch_size=3)
    single = generate_answers(model, tokenizer, prompts, max_new_tokens=16, batch_size=1)
    assert batched == single and len(set(batched)) > 1
    assert calls == [True] * (3 + 8) and model.config.use_cache is False


def test_length_order_is_longest_first_and_stable():
    assert length_order([3, 9, 3, 5]) == [1, 3, 0, 2]
    assert length_order([]) == []


DECLARED = {"set_alarm": {"time"}}  # harness.dataset.FUNCTIONS's shape; these tests do not depend on the generator


def _example(i: int, fn: str, answer: dict, v2: bool) -> SimpleNamespace:
    ex = SimpleNamespace(id=f"test-{i:05d}", split="test", functions=[fn], templates=[f"{fn}#c{i % 2}"], dialects=["gulf"],
                         messages=[SYSTEM, {"role": "user", "content": f"طلب {i}"},
                                   {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}])
    if v2:
        ex.template_seen, ex.values_seen = [i % 2 == 0], [True]
    return ex


@pytest.mark.parametrize("v2", [False, True])
def test_every_output_is_written_as_jsonl(tmp_path, v2):
    """One line per item with the fields a later analysis needs; the eval dict names the file, its lines and sha256."""
    want = {"action": "set_alarm", "time": "07:30"}
    examples = [_example(i, "set_alarm", want, v2) for i in range(4)]
    outputs = ['{"action": "set_alarm", "time": "07:30"}', '{"action": "set_alarm", "time": "٧:٣٠"}', "not json",
               '{"action": "set_alarm", "time": "07:35"}']
    path = tmp_path / "run" / "outputs-test.jsonl"
    result = evaluation(examples, outputs, path, declared=DECLARED)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["output"] for r in rows] == outputs and "طلب 0" in lines[0]  # Arabic stored unescaped
    assert [(r["exact"], r["ast"], r["valid"]) for r in rows] == [(True, True, True), (False, True, True),
                                                                  (False, False, False), (False, False, True)]
    assert set(rows[0]) >= {"id", "split", "function", "dialect", "template", "request", "expected", "output", "exact", "ast"}
    assert rows[1]["template"] == "set_alarm#c1" and rows[0]["expected"] == json.dumps(want)
    assert ("template_seen" in rows[0]) is v2
    assert result["outputs_file"] == "outputs-test.jsonl" and result["outputs_lines"] == 4
    assert result["outputs_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(path.parent.glob("*.tmp"))
    # The v1 keys other code reads, next to the new ones.
    assert result["exact_match"] == 0.25 and result["ast_match"] == 0.5 and result["json_valid_rate"] == 0.75
    assert [o["exact"] for o in result["outcomes"]] == [True, False, False, False]
    assert len(result["failures"]["set_alarm"]) == 3 and len(result["samples"]) == 4 and result["dataset_fingerprint"]
    assert result["ci"]["clusters"] == 2 and result["per_function_dialect"]["set_alarm"]["gulf"]["n"] == 4
    assert (result["seen_unseen"] is not None) is v2
    json.dumps(result)


def test_without_outputs_path_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = evaluation([_example(0, "set_alarm", {"action": "set_alarm", "time": "07:30"}, False)], ["{}"], declared=DECLARED)
    assert "outputs_file" not in result and not list(tmp_path.iterdir())


def test_the_gpu_batch_follows_the_free_memory():
    """Quarter of the free memory over float32 prefill logits (320 tokens × 262,144 × 4 B = 320 MiB a prompt)."""
    from harness.evaluate import CUDA_BATCH, CUDA_MIN_BATCH, cuda_batch

    gib = 1 << 30
    assert cuda_batch(139 * gib, 320, 262_144) == 64  # an idle H200
    assert cuda_batch(80 * gib, 320, 262_144) == 64
    assert cuda_batch(60 * gib, 320, 262_144) == 32
    assert cuda_batch(10 * gib, 320, 262_144) == CUDA_MIN_BATCH  # the floor: an out-of-memory error halves it
    assert cuda_batch(1000 * gib, 320, 262_144) == CUDA_BATCH


def test_after_the_first_batch_the_gpu_batch_follows_its_measured_peak():
    """The first batch (the longest prompts) measured: a slot of the shared tier (1/13 of a quarter of 139 GiB) held
    16 at the worst case; at 10 MiB a prompt (KV cache and last-position logits) it grows to 128; at the worst
    case's 320 MiB it stays; it never shrinks below the batch that ran; a short first batch is counted per prompt."""
    from harness.evaluate import CUDA_BATCH, measured_batch

    gib, mib = 1 << 30, 1 << 20
    slot = 0.25 / 13
    assert measured_batch(16, 16 * 10 * mib, 16, 139 * gib, slot) == 128  # 2.67 GiB / 20 MiB = 133 → 128
    assert measured_batch(16, 16 * 40 * mib, 16, 139 * gib, slot) == 32  # 2.67 GiB / 80 MiB = 34
    assert measured_batch(16, 16 * 320 * mib, 16, 139 * gib, slot) == 16  # the worst case measured: no growth
    assert measured_batch(16, 16 * 320 * mib, 16, 1 * gib, slot) == 16  # never below the batch that ran
    assert measured_batch(16, 5 * 10 * mib, 5, 139 * gib, slot) == 128  # a short first batch: per prompt
    # the reference run alone (a quarter of ~120 GiB free) at its measured 17.5 MB a prompt (H200, 2026-11-29): the cap
    assert measured_batch(64, 64 * 17_519_391, 64, 120 * gib, 0.25) == CUDA_BATCH == 512
    assert measured_batch(64, 64 * 17_519_391, 64, 120 * gib, 0.25 / 13) == 64  # a slot of the shared tier: unchanged
    assert measured_batch(16, 0, 16, 139 * gib, slot) == 16  # nothing measured (memory freed during it): no growth
    assert measured_batch(16, -mib, 16, 139 * gib, slot) == 16
    # the margin is a factor on the measured cost: at 1 (none) 2.67 GiB / 40 MiB = 68 → 64; at 2, 32
    assert measured_batch(16, 16 * 40 * mib, 16, 139 * gib, slot, margin=1.0) == 64


def test_an_out_of_memory_batch_is_halved_and_no_answer_is_lost(tiny_dir, tokenizer, monkeypatch):
    """A generate that runs out of memory above 2 prompts: the 5 prompts (a batch of 8 allowed) fail once, the batch
    becomes half of what failed (2, not 8 → 4 → 4 prompts again), the same prompts are retried, every answer comes back
    in the caller's order and equals the one-by-one answer."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.evaluate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    prompts = [[SYSTEM, {"role": "user", "content": r}] for r in REQUESTS[:5]]
    generate = model.generate

    def short_of_memory(**kw):
        if kw["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (planted)")
        return generate(**kw)

    model.generate = short_of_memory
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    stats = {}
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=8, stats=stats)
    model.generate = generate
    assert answers == generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert (stats["batch_size"], stats["batch_size_last"], stats["out_of_memory_halvings"], stats["batches"]) == (8, 2, 1, 3)


def test_the_first_batch_is_timed_apart(tiny_dir, tokenizer):
    """The generation stats keep the first batch's seconds and steps apart from the mean: on an H200 (2026-11-29) the
    base model's evaluation stepped at 0.370 s where the trained model's stepped at 0.104 s with the same batches, and
    whether a first call's warm-up is the difference could not be told from the record."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.evaluate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    prompts = [[{"role": "user", "content": f"شغل المنبه {i}"}] for i in range(5)]
    stats: dict = {}
    generate_answers(model, tokenizer, prompts, max_new_tokens=3, batch_size=2, stats=stats)
    assert stats["batches"] == 3 and stats["first_batch"]["prompts"] == 2
    assert 1 <= stats["first_batch"]["decoding_steps"] <= 3 and 0 < stats["first_batch"]["seconds"] <= stats["seconds"]


def test_gpu_generation_compiles_with_dynamic_shapes_from_the_first_call(tiny_dir, tokenizer, monkeypatch):
    """On a GPU each evaluation batch runs inside dynamic_shapes_from_the_first_call: a static first graph cost a
    second ~54 s compile at the next batch size on an H200 (2026-11-29); elsewhere nothing changes. Planted: the
    context's option, its restoration, the CPU no-op, and generate_answers entering it with the model's device."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from harness import evaluate

    before = torch._dynamo.config.assume_static_by_default
    with evaluate.dynamic_shapes_from_the_first_call("cuda"):
        assert torch._dynamo.config.assume_static_by_default is False
    assert torch._dynamo.config.assume_static_by_default == before
    with evaluate.dynamic_shapes_from_the_first_call("cpu"):
        assert torch._dynamo.config.assume_static_by_default == before

    assert evaluate._dynamo_config("cuda") is torch._dynamo.config and evaluate._dynamo_config("cpu") is None

    entered, inside = [], []

    @contextlib.contextmanager
    def recording(device_type):
        entered.append(device_type)
        inside.append(True)
        yield
        inside.pop()

    monkeypatch.setattr(evaluate, "dynamic_shapes_from_the_first_call", recording)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    generate, calls = model.generate, []

    def generate_inside(*args, **kwargs):
        calls.append(bool(inside))
        return generate(*args, **kwargs)

    model.generate = generate_inside
    stats: dict = {}
    prompts = [[{"role": "user", "content": f"شغل المنبه {i}"}] for i in range(3)]
    evaluate.generate_answers(model, tokenizer, prompts, max_new_tokens=2, batch_size=2, stats=stats)
    assert entered == ["cpu"] and calls == [True, True] and not inside  # every batch inside the context
    assert stats["compile_shapes"] is None  # a CPU run says it compiled nothing dynamic
