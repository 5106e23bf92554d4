"""The GPU tier's long fine-tunes start at session start, in the background, sharing the GPUs.

The reference fine-tune (E2E) and the experiment runs (harness.experiments: 4 arms × 10 seeds + 2 unclipped
arms × 5) are subprocesses queued on a RunQueue as soon as the first GPU test runs, spread over every visible
GPU; the short probes (NF4, LoRA, VRAM grid, checkpointing) go on meanwhile, on the first GPU.
Tests that read a run wait for it (E2E and its GGUF checks first, as E2E is queued first, then the
experiments); the timings run last (`gpu_phase(3)`), once the GPU is idle again. Sharing leaves the memory figures exact (peak memory is counted per process) and
the runs' step times meaningless as speed figures: the benchmarks in test_performance.py give those.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.recipe import EXPERIMENT_SEEDS, HANDBOOK

E2E_STEPS = int(os.environ.get("HARNESS_E2E_STEPS") or HANDBOOK.max_steps)
# Held-out conversations the reference run generates from (the recipe's by default); the GPU fault runs use fewer
# (tests/faults/test_fault_catalog.py): their claims read the merge, the masks and the export, not the score.
E2E_EVAL_LIMIT = os.environ.get("HARNESS_E2E_EVAL_LIMIT")
SEEDS = [int(s) for s in os.environ.get("HARNESS_EXPERIMENT_SEEDS", "").split(",") if s] or list(EXPERIMENT_SEEDS)
GIB_PER_RUN = 6  # a 270M QLoRA run with generation batch 16 and expandable segments: ~3-5 GiB at its peak
VRAM_GRID_RESERVE_GIB = 32  # the grid's largest cell, 4096×8 without checkpointing, needs ~27 GiB


@dataclass
class GpuRuns:
    queue: object  # harness.run_queue.RunQueue
    slots: int
    e2e_dir: Path | None = None
    experiments_root: Path | None = None
    experiment_runs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: list(SEEDS))


def _slots(items) -> int:
    """Runs at once: what the GPU's memory holds beside the foreground probes ($HARNESS_GPU_PARALLEL overrides)."""
    import torch

    if os.environ.get("HARNESS_GPU_PARALLEL"):
        return int(os.environ["HARNESS_GPU_PARALLEL"])
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    reserve = VRAM_GRID_RESERVE_GIB if any("vram" in item.name for item in items) else 8
    return max(1, min(13, int((total_gib - reserve) // GIB_PER_RUN)))


def _device_slots(items) -> dict[str, int] | None:
    """On a runner with several GPUs: runs at once per GPU (the first also hosts the foreground probes, so it keeps
    their reserve; the others hold as many runs as their memory does). None on one GPU."""
    import torch

    from harness.run_queue import visible_devices

    devices = visible_devices()
    if len(devices) < 2:
        return None
    if os.environ.get("HARNESS_GPU_PARALLEL"):
        return {d: int(os.environ["HARNESS_GPU_PARALLEL"]) for d in devices}
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    others = max(1, min(13, int((total_gib - 2) // GIB_PER_RUN)))
    return {devices[0]: _slots(items), **{d: others for d in devices[1:]}}


def _wanted(items) -> set[str]:
    return {name for item in items if not item.get_closest_marker("skip")
            for mark in item.iter_markers("uses_runs") for name in mark.args}


@pytest.fixture(scope="session", autouse=True)
def gpu_runs(request, tmp_path_factory):
    """Queue and start the selected long runs (E2E first: it also exports); stop what is left at the end."""
    from harness.experiments import all_arms, queue_arms
    from harness.run_queue import RunQueue

    items = request.session.items
    wanted = _wanted(items)
    queue = RunQueue(_slots(items), desc="GPU tier fine-tunes", devices=_device_slots(items))
    runs = GpuRuns(queue, queue.slots)
    if wanted:
        model = str(request.getfixturevalue("gemma_dir"))
    if "e2e" in wanted:
        runs.e2e_dir = Path(os.environ.get("HARNESS_E2E_OUT") or tmp_path_factory.mktemp("e2e"))
        runs.queue.add("e2e", runs.e2e_dir, [sys.executable, "-m", "harness", "finetune", "--model", model,
                                             "--backend", "unsloth", "--out", str(runs.e2e_dir),
                                             "--max-steps", str(E2E_STEPS),
                                             *(["--eval-limit", E2E_EVAL_LIMIT] if E2E_EVAL_LIMIT else [])])
    if "experiments" in wanted:
        runs.experiments_root = Path(os.environ.get("HARNESS_EXPERIMENTS_DIR") or tmp_path_factory.mktemp("experiments"))
        runs.experiment_runs = queue_arms(runs.queue, runs.experiments_root, all_arms(), SEEDS, model=model,
                                          backend="unsloth")
    runs.queue.start()
    yield runs
    runs.queue.stop()


@pytest.fixture
def gpu_to_itself(gpu_runs):
    """Wait until the background runs are done, so that timings measure one process alone on the GPU."""
    gpu_runs.queue.wait_all()


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

