"""Unsloth vs plain transformers+peft+bitsandbytes+trl, same recipe and data, timed step by step.

pytest-benchmark times one real training step per round (warm-up rounds excluded; the server's own
warm-up steps absorb compilation). Keep the JSON with `--benchmark-json` so `--benchmark-compare`
works across library versions; the ratio and peak memory go into the report.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness import backends

pytestmark = [pytest.mark.gpu, pytest.mark.gpu_phase(3)]

MODEL = os.environ.get("HARNESS_PERF_MODEL", "gemma3-270m")
ROUNDS = int(os.environ.get("HARNESS_PERF_ROUNDS", "60"))
RESULTS: dict = {}


class StepServer:
    """A harness.step_server process: `step()` runs one training step there and returns when it is done."""

    def __init__(self, backend: str, warmup: int = 20):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.step_server", "--backend", backend, "--model", MODEL,
                                      "--warmup", str(warmup)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1, cwd=Path(__file__).resolve().parents[2])
        self.tokens: list[int] = []
        self._read_until("ready")

    def _read_until(self, prefix: str) -> str:
        for line in self.proc.stdout:  # libraries print banners to stdout too: skip them
            if line.startswith(prefix):
                return line
        code = self.proc.wait()
        self.log.seek(0)
        raise AssertionError(f"step server exited (code {code}) before printing {prefix!r}:\n{self.log.read()[-3000:]}")

    def step(self) -> None:
        self.proc.stdin.write("step\n")
        self.tokens.append(int(self._read_until("done").split()[1]))

    def close(self) -> dict:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        stats = json.loads(self._read_until('{"backend"'))  # the trainer also prints {'loss': …} dicts
        self.proc.wait(timeout=120)
        return stats


@pytest.mark.parametrize("backend", backends.names())
def test_training_step_time(backend, benchmark, gpu_to_itself):
    """One training step of the recipe on each backend, in its own process, warm-up excluded."""
    server = StepServer(backend)
    try:
        benchmark.pedantic(server.step, rounds=ROUNDS, iterations=1, warmup_rounds=3)
    finally:
        stats = server.close()
    mean = benchmark.stats.stats.mean
    measured = server.tokens[3:]  # the benchmark's own warm-up rounds are not in its stats
    stats.update(step_seconds_mean=round(mean, 4), step_seconds_median=round(benchmark.stats.stats.median, 4),
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
