"""The GPU tier's foreground probes as background runs, started with the session beside the fine-tunes.

Each probe already measures in a fresh process of its own (Unsloth patches torch and transformers once per process)
and what it measures is per process: peak memory (torch counts it per process), which checkpoint function the layers
call, which kernels a step launches, the gradients of two trainers. Run one after another in the pytest process's
foreground they were the GPU tier's critical path: on an H200 beside three fine-tunes (2026-11-29) five probe tests
took 1,006 s (GC-MECHANISM 379.9, ACCUM-EQUIVALENCE 236.6, the VRAM grid 177.6, the 511/512/513 boundary 151.0, the 4-bit
reload 60.5) while the reference fine-tune was done at ~minute 14. So they are queued on a RunQueue of their own at
session start, `at_once` at a time, and a test waits for its probes by name.

    python -m harness.probe_runs [--timeout SECONDS] FOLDER MODULE [ARGS ...]

runs `python -m MODULE ARGS` in this process (stopped with every thread's stack after SECONDS), its stdout (the probe's JSON on the last line) into FOLDER/stdout.txt,
and writes FOLDER/run.json: {"complete": true, "result": <that JSON>, "seconds", "gpu_peak_reserved_mib"}. A probe that
fails exits non-zero with the tail of what it printed on stderr (RunQueue keeps it in FOLDER/log.txt).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Each probe's GPU memory at its peak, except the no-checkpointing grid: the grid's largest shape (4096 × 8) took
# 2,625.8 MiB allocated with Unsloth's checkpointing and 3,185.8 with HF's (H200, unsloth 2026.10.9, 2026-11-28); the
# checkpoint probes and ACCUM-EQUIVALENCE's 8 short rows train smaller steps. 4 GiB leaves the allocator its rounding.
PROBE_GIB = 4
# The no-checkpointing grid at 4096 × 8: 26,857.4 MiB allocated (same run); with its allocator's reserve.
NO_CHECKPOINTING_GRID_GIB = 32
VRAM_GRID = os.environ.get("HARNESS_VRAM_GRID", "512x1,512x8,1024x1,1024x8,2048x1,2048x8,4096x1,4096x8")


@dataclass
class Probe:
    name: str
    module: str
    args: list[str]
    env: dict = field(default_factory=dict)
    gib: int = PROBE_GIB
    # seconds in its own process: twice what each test allowed its probe in the foreground (900 s, the grid 1500), now
    # that four run at once beside the fine-tunes (GC-MECHANISM took 380 s beside three); only a hang should reach it
    timeout: int = 1800


def probes(perf_model: Path, model: Path, out_root: Path) -> dict[str, Probe]:
    """Every foreground probe of the GPU tier, the slowest first (the queue starts them in this order).
    `perf_model`: the model for memory and checkpointing figures (tests/gpu/conftest.py's perf_model); `model`: the
    session's model (ACCUM-EQUIVALENCE trains the real weights)."""
    from harness.recipe import HANDBOOK

    boundary = HANDBOOK.max_seq_length
    compile_disabled = {"UNSLOTH_COMPILE_DISABLE": os.environ.get("UNSLOTH_COMPILE_DISABLE", "1")}
    table = [Probe("checkpoint-4096-profile", "harness.gpu_probe",
                   ["checkpoint", "--model", str(perf_model), "--max-seq-length", "4096", "--profile"]),
             Probe("accumulation", "harness.accumulation",
                   ["--backend", "unsloth", "--model", str(model), "--out", str(out_root / "accumulation-trainers")]),
             *(Probe(f"vram-{mode}", "harness.gpu_probe",
                     ["vram", "--model", str(perf_model), "--mode", mode, "--shapes", VRAM_GRID], compile_disabled,
                     NO_CHECKPOINTING_GRID_GIB if mode == "False" else PROBE_GIB, timeout=3000)
               for mode in ("False", "True", "unsloth")),
             *(Probe(f"checkpoint-{n}", "harness.gpu_probe",
                     ["checkpoint", "--model", str(perf_model), "--max-seq-length", str(n)])
               for n in (256, boundary - 1, boundary, boundary + 1))]
    return {p.name: p for p in table}


def at_once(total_gib: float) -> int:
    """Probes at once on a GPU of `total_gib` ($HARNESS_GPU_PROBES_AT_ONCE overrides): 4 where it has 100 GiB or more
    (an H200: 4 probes, the pytest process's model and 13 fine-tunes), else 2 (an 80 GiB H100 keeps room for 5
    fine-tunes beside them)."""
    if os.environ.get("HARNESS_GPU_PROBES_AT_ONCE"):
        return max(1, int(os.environ["HARNESS_GPU_PROBES_AT_ONCE"]))
    return 4 if total_gib >= 100 else 2


def selected(names: list[str]) -> list[Probe]:
    """The probes named (a test's `uses_probes` marker); ValueError for a name this table does not hold."""
    table = probes(Path("model"), Path("model"), Path("out"))
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"no such GPU probe: {unknown} (harness.probe_runs.probes has {sorted(table)})")
    return [table[name] for name in names]


def reserve_gib(selected: list[Probe], n_at_once: int) -> int:
    """GPU memory the probes may hold at once: the `n_at_once` largest of those selected (0 where none is)."""
    return sum(sorted((p.gib for p in selected), reverse=True)[:n_at_once])


def command(probe: Probe, folder: Path) -> list[str]:
    return [sys.executable, "-m", "harness.probe_runs", "--timeout", str(probe.timeout), str(folder), probe.module,
            *probe.args]


def result(queue, name: str, folder: Path, timeout: float | None = None) -> dict:
    """The probe's JSON once its run is complete; AssertionError with its outcome (the log's tail) if it failed."""
    outcome = queue.wait(name, timeout=timeout)[name]
    if not outcome.startswith("complete"):
        raise AssertionError(f"probe {name} {outcome}")
    return json.loads((Path(folder) / "run.json").read_text())["result"]


def timing(folder: Path) -> dict:
    """What a complete probe run took: seconds in its process and its sampled GPU memory peak (torch's reserved memory
    every 0.2 s: a lower bound of the process's footprint, which adds the CUDA context and anything between samples)."""
    record = json.loads((Path(folder) / "run.json").read_text())
    return {k: record.get(k) for k in ("seconds", "gpu_peak_reserved_mib")}


class _PeakSampler:
    """This process's reserved GPU memory, sampled every 0.2 s once CUDA is initialized (the probes reset torch's own
    peak counter between their shapes, so torch's peak at the end would be the last shape's only)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, name="gpu-peak", daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.2):
            self.read()

    def read(self):
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_initialized():
                self.peak = max(self.peak, torch.cuda.memory_reserved())
        except Exception:  # a sampler must never take the probe down
            pass

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.read()
        return round(self.peak / 2**20, 1) if self.peak else None


def main(argv: list[str] | None = None) -> int:
    import runpy

    import faulthandler

    argv = list(sys.argv[1:] if argv is None else argv)
    timeout = None
    if argv[:1] == ["--timeout"] and len(argv) > 1:
        timeout, argv = float(argv[1]), argv[2:]
    if len(argv) < 2:
        print("usage: python -m harness.probe_runs [--timeout SECONDS] FOLDER MODULE [ARGS ...]", file=sys.stderr)
        return 2
    folder, module, args = Path(argv[0]), argv[1], argv[2:]
    if timeout:  # from a watchdog thread in C: fires even while the probe waits inside CUDA; every thread's stack to
        # stderr (the run's log), then exit 1, so the test fails with where it hung instead of the tier waiting forever
        faulthandler.dump_traceback_later(timeout, exit=True)
    folder.mkdir(parents=True, exist_ok=True)
    out_path = folder / "stdout.txt"
    sampler, started, code = _PeakSampler(), time.perf_counter(), 0
    sys.stdout.flush()
    saved = os.dup(1)
    with open(out_path, "wb") as out:
        os.dup2(out.fileno(), 1)  # the descriptor, not sys.stdout: libraries' C code prints there too
        try:
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):  # sys.exit("why"): Python prints the why
                print(exc.code, file=sys.stderr)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
    peak = sampler.stop()
    printed = out_path.read_text(errors="replace").strip().splitlines()
    if code != 0:
        print(f"{module} exited {code}; its last output:\n" + "\n".join(printed[-20:]), file=sys.stderr)
        return code
    try:
        found = json.loads(printed[-1]) if printed else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        print(f"{module} printed no JSON object on its last line:\n" + "\n".join(printed[-20:]), file=sys.stderr)
        return 1
    record = {"complete": True, "probe": [module, *args], "result": found,
              "seconds": round(time.perf_counter() - started, 1), "gpu_peak_reserved_mib": peak}
    (folder / "run.json").write_text(json.dumps(record, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
