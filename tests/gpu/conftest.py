"""The GPU tier's long fine-tunes and its probes start at session start, in the background, sharing the GPUs.

The reference fine-tune (E2E) and the experiment runs (harness.experiments: 4 arms × 10 seeds + 2 unclipped
arms × 5) are subprocesses queued on a RunQueue as soon as the first GPU test runs, spread over every visible
GPU. The probes (checkpointing mechanism and boundary, the VRAM grid, accumulation: harness.probe_runs) are queued
on a second RunQueue at the same moment, a few at a time on the first GPU; their tests wait for them by name
(`uses_probes`). The short in-process tests (NF4, LoRA, the 4-bit reload) run first, meanwhile (`gpu_phase(0)`);
then the readers of background runs: probes, E2E and its GGUF checks (E2E is queued first), the experiments; the
timings run last (`gpu_phase(3)`), once the GPU is idle again. Sharing leaves the memory figures exact (peak memory is
counted per process) and the runs' step times meaningless as speed figures: the benchmarks in test_performance.py
give those.
"""

from __future__ import annotations

import os
import sys
import threading
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
FOREGROUND_GIB = 8  # the pytest process's own: Unsloth's 4-bit 270M with LoRA (test_model_facts), the 4-bit reload
# a step server's (harness.step_client): the 270M with LoRA, its optimizer state and one step's activations; 870 and
# 1,226 MiB peak allocated (unsloth, hf) on an H100 on 2026-11-26 (README), plus its CUDA context
STEP_SERVER_GIB = 3


@dataclass
class GpuRuns:
    queue: object  # harness.run_queue.RunQueue
    slots: int
    e2e_dir: Path | None = None
    base_eval_apart: bool = False  # the reference run's base model scored in its own process ("e2e-base")
    experiments_root: Path | None = None
    experiment_runs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: list(SEEDS))


def _has_base_eval(e2e_dir: Path) -> bool:
    """A complete reference run (reused from $HARNESS_E2E_OUT) whose record holds its base score already."""
    import json

    try:
        record = json.loads((Path(e2e_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("complete") is True and "base_eval" in record


def shared_alone() -> dict:
    """The reference run's share when only its base evaluation runs beside it, for its first ~2 minutes: a run alone's
    (the queue counts queued runs, not runs alive together: it would keep half the threads and memory share for ~12
    minutes, and its held-out evaluation would start at half the batch)."""
    from harness.run_queue import shared_gpu_env

    return shared_gpu_env(1)


def _slots(items) -> int:
    """Runs at once: what the GPU's memory holds beside the probes and the pytest process's own model
    ($HARNESS_GPU_PARALLEL overrides)."""
    import torch

    if os.environ.get("HARNESS_GPU_PARALLEL"):
        return int(os.environ["HARNESS_GPU_PARALLEL"])
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    reserve = FOREGROUND_GIB + probes_reserve_gib(items, total_gib) + STEP_SERVER_GIB * len(_wanted_step_servers(items))
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


def _wanted_probes(items) -> list[str]:
    return list(dict.fromkeys(name for item in items if not item.get_closest_marker("skip")
                              for mark in item.iter_markers("uses_probes") for name in mark.args))


def _wanted_step_servers(items) -> list[str]:
    """The backends whose step timings are selected (tests marked step_timing, parametrized by backend)."""
    return list(dict.fromkeys(item.callspec.params["backend"] for item in items
                              if not item.get_closest_marker("skip") and item.get_closest_marker("step_timing")))


def probes_reserve_gib(items, total_gib: float) -> int:
    from harness.probe_runs import at_once, reserve_gib, selected

    try:
        return reserve_gib(selected(_wanted_probes(items)), at_once(total_gib))
    except ValueError as exc:
        raise pytest.UsageError(f"a uses_probes marker: {exc}") from None


@pytest.fixture(scope="session", autouse=True)
def gpu_runs(request, tmp_path_factory):
    """Queue and start the selected long runs (E2E first: it also exports); stop what is left at the end."""
    from harness.experiments import all_arms, queue_arms
    from harness.record_facts import base_eval_dir
    from harness.run_queue import RunQueue

    items = request.session.items
    wanted = _wanted(items)
    queue = RunQueue(_slots(items), desc="GPU tier fine-tunes", devices=_device_slots(items), timeline=True)
    runs = GpuRuns(queue, queue.slots)
    if wanted:
        model = model_for_the_runs(request)
    if "e2e" in wanted:
        runs.e2e_dir = Path(os.environ.get("HARNESS_E2E_OUT") or tmp_path_factory.mktemp("e2e"))
        common = ["--model", model, "--backend", "unsloth", "--max-steps", str(E2E_STEPS),
                  *(["--eval-limit", E2E_EVAL_LIMIT] if E2E_EVAL_LIMIT else [])]
        # The base model's evaluation in a process of its own beside the fine-tune (it needs nothing the training
        # makes): 112 s of the reference run's ~750 s critical path on an H200 on 2026-11-29, ~60 s of it its first
        # batch's warm-up (reports/examples/h200-2026-11-29-gpu-tier-without-experiments). Not where runs go one at
        # a time (it would only queue behind), nor for a reference run done earlier with its base score in it.
        runs.base_eval_apart = runs.slots > 1 and not _has_base_eval(runs.e2e_dir)
        e2e_env = {} if "experiments" in wanted or not runs.base_eval_apart else shared_alone()
        # its log then names each recompile (harness.train_unsloth.log_recompiles): its second step took 67.0 s of
        # compiling on an H200 (reports/examples/h200-2026-11-29-gpu-tier-s16), the cause read from Unsloth's source
        e2e_env = {**e2e_env, "HARNESS_LOG_RECOMPILES": "1"}
        runs.queue.add("e2e", runs.e2e_dir, [sys.executable, "-m", "harness", "finetune", *common, "--out",
                                             str(runs.e2e_dir), *(["--no-base-eval"] if runs.base_eval_apart else [])],
                       env=e2e_env)
        if runs.base_eval_apart:
            runs.queue.add("e2e-base", base_eval_dir(runs.e2e_dir),
                           [sys.executable, "-m", "harness", "finetune", *common, "--out",
                            str(base_eval_dir(runs.e2e_dir)), "--base-eval-only"])
    if "experiments" in wanted:
        runs.experiments_root = Path(os.environ.get("HARNESS_EXPERIMENTS_DIR") or tmp_path_factory.mktemp("experiments"))
        runs.experiment_runs = queue_arms(runs.queue, runs.experiments_root, all_arms(), SEEDS, model=model,
                                          backend="unsloth")
    runs.queue.start()
    try:
        if wanted:  # built here while the runs import their libraries (model_for_the_runs), or already there
            request.getfixturevalue("gemma_dir")
        yield runs
    finally:  # also where the model could not be built: its environment problem skips every test, nothing runs on
        runs.queue.stop()


def model_for_the_runs(request) -> str:
    """What the background runs get as `--model`: an embedded model's name, which each run resolves itself once its
    libraries are imported (harness.backends.Backend.prepare; the cache's lock makes it wait for a build in progress),
    so that the runs start while this process materializes the model; any other model's folder, resolved here
    (gemma_dir: a name that does not resolve stops the session before anything starts).

    Why: on a fresh runner the reference run was queued only once the materialization was done, 40.7 and 27.1 s into
    the tier (33.9 and 21.9 s after the first test began, reports/examples/h200-2026-11-29-gpu-tier-s19 and its run2),
    and a run's process spends ~18 s outside its phases (its base evaluation's: 114 s, phases 96.2 s), mostly imports
    before them: both on the tier's critical path."""
    from harness.models import EMBEDDED_MODELS

    name = request.config.getoption("--model")
    return name if name in EMBEDDED_MODELS else str(request.getfixturevalue("gemma_dir"))


@dataclass
class GpuProbes:
    queue: object  # harness.run_queue.RunQueue
    folders: dict[str, Path]
    extras: dict = field(default_factory=dict)  # the report's extras: each probe's seconds and GPU memory go there

    def result(self, name: str) -> dict:
        from harness.probe_runs import result, timing

        if name not in self.folders:
            raise KeyError(f"probe {name} was not queued: mark the test @pytest.mark.uses_probes({name!r})")
        found = result(self.queue, name, self.folders[name])
        self.extras.setdefault("gpu_probes", {})[name] = timing(self.folders[name])
        return found


@pytest.fixture(scope="session", autouse=True)
def gpu_probes(request, tmp_path_factory, gpu_runs):
    """Queue and start the probes the selected tests read (harness.probe_runs), `at_once` at a time on the
    first GPU, beside the fine-tunes; stop what is left at the end. After gpu_runs (pytest sets autouse fixtures up
    in name order): the fine-tunes start before the model is materialized, the probes get its folder."""
    import torch

    from harness.probe_runs import at_once, command, probes
    from harness.pytest_plugin import _recorder
    from harness.run_queue import RunQueue, visible_devices

    items = request.session.items
    wanted = _wanted_probes(items)
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0
    # the first GPU (the others hold only fine-tunes); the probes' environment as before they were queued (no
    # expandable segments: GC-VRAM's reserved figures stay comparable with the recorded grids), their threads shared
    queue = RunQueue(at_once(total_gib), desc="GPU tier probes", poll_seconds=1.0,
                     devices=visible_devices()[:1] or None, gpu_sharing_env=False, timeline=True)
    folders = {}
    if wanted:
        root = tmp_path_factory.mktemp("probes")
        table = probes(_perf_model(request)[1], request.getfixturevalue("gemma_dir"), root)
        for name in (n for n in table if n in wanted):  # the table's order: the slowest first
            folders[name] = root / name
            queue.add(name, folders[name], command(table[name], folders[name]), env=table[name].env)
    queue.start()
    recorder = _recorder(request.config)
    yield GpuProbes(queue, folders, recorder.extras if recorder is not None else {})
    queue.stop()


def _perf_model(request) -> tuple[str, Path]:
    """(name, folder) of the model for memory and speed figures: $HARNESS_PERF_MODEL, else the session's model."""
    from harness.models import resolve

    name = os.environ.get("HARNESS_PERF_MODEL")
    return (name, resolve(name).path) if name else ("gemma3-270m", request.getfixturevalue("gemma_dir"))


@dataclass
class StepServers:
    servers: dict  # backend -> harness.step_client.StepServer, started held
    warmer: threading.Thread | None = None
    warmed_beside: str = "not warmed yet"  # what ran beside the warm-up (the timings' record says)

    def ready(self, backend: str):
        """Every server warmed up (none compiles while another is timed); this backend's server. A server that died
        fails its own test, with its log, not the other backend's."""
        if self.warmer is not None:
            self.warmer.join()
        for name, server in self.servers.items():
            try:
                server.wait_ready()
            except AssertionError:
                if name == backend:
                    raise
        return self.servers[backend]


@pytest.fixture(scope="session", autouse=True)
def step_servers(request, gpu_runs):
    """The step-time servers of the selected timing tests, started held at session start (they load meanwhile) and
    warmed up once the reference fine-tune is done (beside its GGUF checks, which are mostly llama.cpp on the CPU):
    the timed rounds run last with the GPU to itself (gpu_to_itself), as before; only the warm-up moved."""
    from harness.step_client import StepServer

    backends = _wanted_step_servers(request.session.items)
    servers = StepServers({b: StepServer(b, _perf_model(request)[0], hold=True) for b in backends})

    def warm_after_the_reference_run():
        if gpu_runs.e2e_dir is not None:
            gpu_runs.queue.wait(["e2e"])
            beside = "after the reference run, beside its GGUF checks"
        else:
            beside = "at session start, beside the probes and the in-process tests"
        if gpu_runs.experiment_runs:
            beside += " and the experiment runs still going"
        servers.warmed_beside = beside
        for server in servers.servers.values():
            try:
                server.warm()
            except AssertionError:  # it died loading: its own test says so, with its log
                pass

    if servers.servers:
        servers.warmer = threading.Thread(target=warm_after_the_reference_run, name="step-server warmer", daemon=True)
        servers.warmer.start()
    yield servers
    for server in servers.servers.values():
        server.kill()


@pytest.fixture
def gpu_to_itself(gpu_runs, gpu_probes):
    """Wait until the background runs and probes are done, so that timings measure one process alone on the GPU (a
    probe test that failed early, or a test skipped at run time, leaves probes nobody else waits for)."""
    gpu_runs.queue.wait_all()
    gpu_probes.queue.wait_all()


@pytest.fixture(scope="module")
def perf_model(request):
    """(name, folder) of the model for memory and speed figures (_perf_model, the one the probes were started with).

    Memory and speed do not depend on weight values: `gemma3-270m-random` (same architecture) serves
    where the real weights have not been brought to the runner. The evidence names which was used.
    """
    return _perf_model(request)


@pytest.fixture(scope="module")
def unsloth_model(gemma_dir):
    from harness.train_unsloth import load_unsloth

    return load_unsloth(gemma_dir)

