"""Unsloth vs plain transformers+peft+bitsandbytes+trl, same recipe and data, timed step by step.

pytest-benchmark times one real training step per round (warm-up rounds excluded; the server's own
warm-up steps absorb compilation). Keep the JSON with `--benchmark-json` so `--benchmark-compare`
works across library versions; the ratio and peak memory go into the report.
"""

import os

import pytest

from harness import backends

pytestmark = [pytest.mark.gpu, pytest.mark.gpu_phase(3)]

MODEL = os.environ.get("HARNESS_PERF_MODEL", "gemma3-270m")
ROUNDS = int(os.environ.get("HARNESS_PERF_ROUNDS", "60"))
RESULTS: dict = {}


@pytest.mark.step_timing  # its servers start at session start (tests/gpu/conftest.py: step_servers)
@pytest.mark.parametrize("backend", backends.names())
def test_training_step_time(backend, benchmark, gpu_to_itself, step_servers):
    """One training step of the recipe on each backend, in its own process, warm-up excluded. The servers were started
    at session start and warmed up beside the reference run's GGUF checks (tests/gpu/conftest.py: step_servers); the
    timed rounds run with the GPU to itself."""
    server = step_servers.ready(backend)
    try:
        benchmark.pedantic(server.step, rounds=ROUNDS, iterations=1, warmup_rounds=3)
    finally:
        stats = server.close()
    mean = benchmark.stats.stats.mean
    measured = server.tokens[3:]  # the benchmark's own warm-up rounds are not in its stats
    held = server.warm_seconds is not None
    stats.update(warm_seconds=server.warm_seconds,
                 warmed_up=(f"{step_servers.warmed_beside} (its warm-up seconds are not a speed figure)" if held else
                            "as soon as it loaded: the server did not hold (its trainer loop never began training)"),
                 step_seconds_mean=round(mean, 4), step_seconds_median=round(benchmark.stats.stats.median, 4),
                 tokens_per_step=round(sum(measured) / len(measured), 1),
                 tokens_per_second=round(sum(measured) / len(measured) / mean, 1), rounds=len(measured))
    benchmark.extra_info.update(stats)
    RESULTS[backend] = stats
    assert stats["tokens_per_second"] > 0


def test_unsloth_vs_hf_throughput(run_extras, gpu_runs):
    """Both backends fed the same data (tokens per step within 5%); their ratios go into the report."""
    if set(RESULTS) != {"hf", "unsloth"}:
        pytest.skip("needs both step-time benchmarks of this session")
    u, h = RESULTS["unsloth"], RESULTS["hf"]
    run_extras["performance"] = {
        "model": MODEL, "backends": RESULTS,
        "throughput_ratio_unsloth_over_hf": round(u["tokens_per_second"] / h["tokens_per_second"], 3),
        "step_time_ratio_hf_over_unsloth": round(h["step_seconds_mean"] / u["step_seconds_mean"], 3),
        "peak_allocated_ratio_unsloth_over_hf": round(u["peak_allocated_mib"] / h["peak_allocated_mib"], 3),
        # torch's and Unsloth's compile caches persist on disk: after this session's fine-tunes, warm-up is shorter
        "compile_caches": "warm (this session's fine-tunes ran first)" if gpu_runs.queue.runs else "as found"}
    assert abs(u["tokens_per_step"] - h["tokens_per_step"]) <= 0.05 * h["tokens_per_step"], (u, h)
