"""The GPU side of issue #15's blind spots: a serialized 4-bit model on CUDA (NF4-SERIALIZED), and Unsloth's
checkpointing fallback at the recipe's max_seq_length boundary, 511 / 512 / 513 (GC-FALLBACK-BOUNDARY)."""

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.claim("NF4-SERIALIZED")
def test_a_saved_4bit_model_reloads_identically_on_cuda(gemma_dir, tokenizer, tmp_path, certify):
    """The embedded 270M loaded in 4-bit on the GPU (bitsandbytes' CUDA kernels), save_pretrained, from_pretrained:
    packed codes, quant states, dequantized weights and the logits of one prompt identical."""
    from harness.quant_serialize import serialize_facts

    prompt = list(tokenizer.apply_chat_template([{"role": "user", "content": "شغل المنبه الساعة ٧"}],
                                                add_generation_prompt=True, return_dict=True)["input_ids"])
    certify("NF4-SERIALIZED", serialize_facts(gemma_dir, tmp_path / "gemma-4bit", device_map={"": 0}, prompt_ids=prompt),
            "gpu")


@pytest.mark.claim("GC-FALLBACK-BOUNDARY")
@pytest.mark.uses_probes("checkpoint-511", "checkpoint-512", "checkpoint-513")
@pytest.mark.gpu_phase(1)
def test_unsloth_checkpointing_at_the_recipes_max_seq_length(gpu_probes, perf_model, certify):
    """max_seq_length 511, 512 (the recipe's) and 513: which checkpoint function the unsloth mode installs and what the
    decoder layers call (harness.gpu_probe checkpoint, each in a fresh process: Unsloth patches torch once a process)."""
    from harness.recipe import HANDBOOK

    probes = {n: gpu_probes.result(f"checkpoint-{n}")
              for n in (HANDBOOK.max_seq_length - 1, HANDBOOK.max_seq_length, HANDBOOK.max_seq_length + 1)}
    certify("GC-FALLBACK-BOUNDARY", {"recipe_max_seq_length": HANDBOOK.max_seq_length, "model": perf_model[0],
                                     "functions": {str(n): p["checkpoint_function"] for n, p in probes.items()},
                                     "layer_functions": {str(n): p.get("layer_checkpoint_functions") for n, p in probes.items()},
                                     "autograd_functions": {str(n): p.get("checkpoint_autograd_function") for n, p in probes.items()},
                                     "errors": {str(n): p.get("errors") for n, p in probes.items() if p.get("errors")}},
            "gpu")


@pytest.mark.claim("ACCUM-EQUIVALENCE")
@pytest.mark.uses_probes("accumulation")
@pytest.mark.gpu_phase(1)
def test_unsloth_accumulated_micro_batches_are_one_batch(gpu_probes, certify):
    """Unsloth's own trainer (its loss normalization for accumulation, its checkpointing, 4-bit base, bf16), twice on the
    same 8 rows: 2 × batch 4 against 1 × batch 8; the first optimizer step's gradient, the logged gradient norm and
    the lr of each optimizer step (harness.accumulation, in a process of its own)."""
    certify("ACCUM-EQUIVALENCE", gpu_probes.result("accumulation"), "gpu")
