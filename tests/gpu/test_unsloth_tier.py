"""The GPU tier: the handbook's pipeline through Unsloth on a CUDA GPU (`pytest -m gpu`).

Unsloth patches torch and transformers globally, so memory and checkpointing probes run in fresh
processes (harness.gpu_probe), and so does the end-to-end run (queued at session start, see
conftest.py); the model facts share this process.
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

GRID = os.environ.get("HARNESS_VRAM_GRID", "512x1,512x8,1024x1,1024x8,2048x1,2048x8,4096x1,4096x8")


@pytest.fixture(scope="module")
def perf_model(request):
    """(name, folder) of the model for memory and speed figures: $HARNESS_PERF_MODEL, else the session's model.

    Memory and speed do not depend on weight values: `gemma3-270m-random` (same architecture) serves
    where the real weights have not been brought to the runner. The evidence names which was used.
    """
    from harness.models import resolve

    name = os.environ.get("HARNESS_PERF_MODEL")
    return (name, resolve(name).path) if name else ("gemma3-270m", request.getfixturevalue("gemma_dir"))


@pytest.fixture(scope="module")
def unsloth_model(gemma_dir):
    from harness.train_unsloth import load_unsloth

    return load_unsloth(gemma_dir)


def _probe(*args, env=None, timeout=900) -> dict:
    run_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "harness.gpu_probe", *args], capture_output=True, text=True,
                          timeout=timeout, env=run_env)
    if proc.returncode != 0:
        raise AssertionError(f"probe {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.claim("NF4-LOAD", "NF4-DOUBLE-QUANT")
def test_unsloth_loads_nf4_with_double_quant(unsloth_model, certify):
    """FastModel.from_pretrained(load_in_4bit=True): nf4 Linear4bit, bf16 compute, nested quant states."""
    from harness.quant import double_quant_facts, load_facts

    model, _ = unsloth_model
    certify("NF4-LOAD", load_facts(model), "gemma3-270m")
    certify("NF4-DOUBLE-QUANT", double_quant_facts(model), "gpu")


@pytest.mark.claim("NF4-ROUNDTRIP")
def test_unsloth_quant_states_roundtrip_within_bound(unsloth_model, gemma_dir, certify):
    """The loaded model's own quant states dequantize to within the NF4 bound of the bf16 checkpoint."""
    import bitsandbytes.functional as F
    from safetensors import safe_open

    from harness.nf4_compare import roundtrip
    from harness.quant import linear4bit_modules

    from spec.quantization import NF4_MAX_ERR_OVER_ABSMAX

    model, _ = unsloth_model
    # The first 14 quantized projections, each with its bf16 weight from the checkpoint (read once).
    pairs = {}
    with safe_open(str(gemma_dir / "model.safetensors"), "pt") as f:
        for name, module in list(linear4bit_modules(model).items())[:14]:
            key = name.replace("base_model.model.", "").replace(".base_layer", "") + ".weight"
            if key in f.keys():
                pairs[key] = (module, f.get_tensor(key).float())
    n01 = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    facts = roundtrip(n01, {key: w for key, (_, w) in pairs.items()})
    # and the model's own stored state: dequantized vs the checkpoint
    worst = 0.0
    for module, w in pairs.values():
        w = w.cuda()
        # Dequantize to float32: the state's own dtype (bf16) would add bf16 rounding (up to 2^-9·|w|) to the
        # NF4 error (seen on the H100, 2026-11-26: 3.2e-4 over the bound with bf16 output).
        state = copy.copy(module.weight.quant_state)
        state.dtype = torch.float32
        back = F.dequantize_4bit(module.weight.data, state).float()
        absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
        used = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        excess = (back - w).reshape(-1, 64).abs() - (NF4_MAX_ERR_OVER_ABSMAX * absmax + (absmax - used.view(-1, 1)).abs()
                                                     + 1e-3 * absmax)
        worst = max(worst, float(excess.max()))
    facts["model_state_excess_over_bound"] = worst
    certify("NF4-ROUNDTRIP", facts, "gpu")


@pytest.mark.claim("LORA-RANK", "LORA-SCALING", "LORA-TARGETS", "LORA-PARAMS", "LORA-INIT")
def test_unsloth_lora_matches_the_recipe(unsloth_model, certify):
    """get_peft_model(r=32, alpha=64, 7 targets): shapes, scaling 2.0, 126 modules, 7,593,984 trainable, B = 0."""
    from harness.lora import adapter_facts, init_facts

    model, _ = unsloth_model
    facts = adapter_facts(model)
    for claim in ("LORA-RANK", "LORA-SCALING", "LORA-TARGETS", "LORA-PARAMS"):
        certify(claim, facts, "gemma3-270m", soft=True)
    ids = torch.tensor([[2, 105, 2364, 107, 818, 5279, 529, 7001, 563, 106, 107]], device="cuda")
    certify("LORA-INIT", init_facts(model, ids), "gpu", soft=True)
    certify.check()


@pytest.mark.claim("GC-VRAM")
def test_gc_vram_grid(perf_model, certify, run_extras):
    """Peak VRAM of a QLoRA step per checkpointing mode over seq × batch, each mode in a fresh process."""
    env = {**os.environ, "UNSLOTH_COMPILE_DISABLE": os.environ.get("UNSLOTH_COMPILE_DISABLE", "1")}
    # The three modes run at once (peak memory is counted per process, so they do not disturb each other's
    # figures; the grid's largest, 4096×8 without checkpointing, needs ~27 GiB). Their step times do
    # interfere, and are marked so.
    procs = [subprocess.Popen([sys.executable, "-m", "harness.gpu_probe", "vram", "--model", str(perf_model[1]), "--mode", mode,
                               "--shapes", GRID], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for mode in ("unsloth", "True", "False")]
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=1500)
        if proc.returncode != 0:
            raise AssertionError(f"vram probe failed:\n{err[-3000:]}")
        rows += [{**row, "concurrent_modes": 3} for row in json.loads(out.strip().splitlines()[-1])["rows"]]
    run_extras["vram_grid"] = rows
    certify("GC-VRAM", {"grid": rows, "model": perf_model[0]}, "gpu")


@pytest.mark.claim("GC-MECHANISM", "GC-FALLBACK")
def test_gc_mechanism_and_fallback(perf_model, certify):
    """At 4096 the unsloth checkpoint function is installed and offloads to pinned host memory; at 256 it is not."""
    long = _probe("checkpoint", "--model", str(perf_model[1]), "--max-seq-length", "4096", "--profile")
    short = _probe("checkpoint", "--model", str(perf_model[1]), "--max-seq-length", "256")
    pinned = (long.get("host_memory") or {}).get("allocated_bytes.all.peak", 0)
    certify("GC-MECHANISM", {
        "checkpoint_function": long["checkpoint_function"], "offloads_to_pinned_host": bool(pinned) or long["memcpy_dtoh"] > 0,
        "pinned_host_mib": round(pinned / 2**20, 1), "triton_kernels_in_backward": long["triton_kernels"],
        "kernels_sample": long["triton_kernel_names"], "memcpy_dtoh": long["memcpy_dtoh"], "memcpy_htod": long["memcpy_htod"],
        "memcpy_kinds": long["memcpy_kinds"], "model": perf_model[0]}, "gpu")
    certify("GC-FALLBACK", {"function_below_512": short["checkpoint_function"],
                            "function_at_or_above_512": long["checkpoint_function"]}, "gpu")


@pytest.fixture(scope="module")
def e2e(gpu_runs, run_extras):
    """The reference fine-tune's run record: `python -m harness finetune --backend unsloth`, run in the background."""
    outcome = gpu_runs.queue.wait("e2e")["e2e"]
    assert outcome.startswith("complete"), f"the reference fine-tune failed ({gpu_runs.e2e_dir}/log.txt): {outcome}"
    record = json.loads((gpu_runs.e2e_dir / "run.json").read_text())
    run_extras["finetune"] = {k: record.get(k) for k in ("model", "backend", "steps", "phases", "throughput", "eval",
                                                          "base_eval", "val_loss", "memory", "artifacts")}
    run_extras["finetune"]["shared_gpu_with"] = f"up to {gpu_runs.slots - 1} other runs (its step times are not speed figures)"
    return record


@pytest.mark.uses_runs("e2e")
@pytest.mark.gpu_phase(1)
@pytest.mark.claim("E2E-REFERENCE", "RECIPE-FIDELITY", "CHECK-OUTPUT", "MASK-USER-TURNS")
def test_reference_finetune_end_to_end(e2e, certify):
    """Unsloth 4-bit + LoRA + SFT with train_on_responses_only and the cosine schedule, then held-out eval and export."""
    figures = {"steps": e2e["steps"], "throughput": e2e["throughput"].get("tokens_per_second"), "memory": e2e["memory"],
               "val_loss": e2e["val_loss"], "eval": e2e["eval"], "base_eval": e2e["base_eval"],
               "gguf": (e2e.get("artifacts") or {}).get("gguf")}
    order = [p for p in e2e["phases"] if p in ("load", "tokenize", "train", "evaluate", "export")]
    certify("RECIPE-FIDELITY", {**e2e["fidelity"], "backend": "unsloth"}, "gpu", soft=True)
    certify("MASK-USER-TURNS", {**e2e["mask_check"], "batches_fed": e2e["masking_in_batches"]}, "gpu", soft=True)
    e = e2e["eval"]
    certify("CHECK-OUTPUT", {**{k: e[k] for k in ("prompts", "json_valid_rate", "action_rate", "exact_match", "per_function")},
                             "base_exact_match": e2e["base_eval"]["exact_match"], "goal_exact_match": 0.95}, "gpu", soft=True)
    certify("E2E-REFERENCE", {"phases": order, "missing_figures": sorted(k for k, v in figures.items() if v in (None, [], {})),
                              "run_record": e2e["out_dir"], "model": "gemma3-270m", "backend": "unsloth",
                              "steps": len(e2e["steps"])}, "gpu", soft=True)
    certify.check()


@pytest.mark.uses_runs("e2e")
@pytest.mark.gpu_phase(1)
@pytest.mark.claim("GGUF-Q8-EXPORT", "GGUF-Q8-ERROR", "GGUF-LLAMACPP")
def test_unsloth_q8_0_export_offline_is_verified(e2e, dataset, certify, run_extras):
    """save_pretrained_gguf(Q8_0) with the vendored llama.cpp: layout, error bound, same model as our exporter, llama.cpp."""
    from pathlib import Path

    from harness.corpus import tokenizer_corpus
    from harness.gguf_compare import compare, summary
    from harness.gguf_verify import error_vs_checkpoint, layout, llamacpp_checks, llamacpp_loads, read

    art = e2e.get("artifacts") or {}
    assert art.get("gguf_unsloth"), f"Unsloth's export wrote no GGUF: {art.get('gguf_unsloth_error')}"
    unsloth_file, ours, merged = Path(art["gguf_unsloth"]), Path(art["gguf"]), Path(art["merged"])
    comparison = compare(unsloth_file, ours)  # tensors and metadata; llama.cpp below, in child processes first
    run_extras["gguf_exporters"] = {"metadata": comparison["metadata"], "tensors": {
        k: v for k, v in comparison["tensors"].items() if k != "value_differences"}}
    reader = read(unsloth_file)
    certify("GGUF-Q8-EXPORT", {"exporter": "unsloth save_pretrained_gguf (vendored llama.cpp)",
                               "seconds": art.get("gguf_unsloth_seconds"), **layout(reader),
                               **summary(comparison)}, "unsloth", soft=True)
    certify("GGUF-Q8-ERROR", error_vs_checkpoint(reader, merged), "gpu", soft=True)
    from harness.doctor import EnvironmentProblem

    try:  # each load in a child process; a reader that fails on Google's own GGUF too raises EnvironmentProblem
        loads = {path.name: llamacpp_loads(path) for path in (unsloth_file, ours)}
    except EnvironmentProblem:
        certify.check()  # the exporters' verdicts above stand; then the skip says it is the environment
        raise
    if loads[unsloth_file.name][0]:
        prompts = [ex.messages[:-1] for ex in dataset["test"][:20]]
        certify("GGUF-LLAMACPP", llamacpp_checks(unsloth_file, merged, prompts, tokenizer_corpus()), "gemma3-270m",
                soft=True)
    else:  # a reader healthy on Google's file fails on Unsloth's: that is the file's fault
        certify("GGUF-LLAMACPP", {"loaded": False, "token_strings": 0, "token_mismatches": None,
                                  "reason": loads[unsloth_file.name][1]}, "gemma3-270m", soft=True)
    certify.check()
    assert loads[ours.name][0], f"llama.cpp decodes Google's GGUF but not this project's export: {loads[ours.name][1]}"
