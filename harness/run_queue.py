"""Subprocess runs queued on the GPUs, `slots` at a time on each, from a background thread.

A 270M model's training step is bound by kernel launches, not by the GPU, so several fine-tunes in
their own processes share one GPU well (12 at once took ~10 min on an H200, against ~53 min one after
another). The GPU tier queues its long runs here at session start and goes on with short probes
meanwhile; a test that needs a run's result waits for it by name. A run whose folder already holds a
complete run.json is not run again, so an interrupted tier resumes where it stopped.

On a runner with several GPUs, `devices` places each run on one of them through CUDA_VISIBLE_DEVICES (the GPU
with the most free slots, so the load spreads evenly): each GPU holds its own `slots` runs at once (or a
per-GPU count: `devices={"0": 2, "1": 7}` where GPU 0 also hosts the foreground probes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


def read_record(folder: Path) -> dict | None:
    """A run's record (run.json), None where there is none that reads."""
    try:
        record = json.loads((Path(folder) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def complete(folder: Path) -> bool:
    return (read_record(folder) or {}).get("complete") is True


def visible_devices() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (a child given one of these sees only it);
    [] where there is none."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return [d.strip() for d in named.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch, no driver: no GPU
        return []


def shared_gpu_env(slots: int, on_this_gpu: int | None = None) -> dict:
    """Environment for `slots` runs at once on the host (`on_this_gpu` of them on a run's GPU, all of them if None):
    the cores shared among them (oversubscribed threads slowed 4 CPU runs on 2 cores ~10×) and expandable segments so
    their memory packs together. The generation batch is no longer fixed at 16 here: harness.evaluate sizes it by the
    memory free when it starts and halves it on an out-of-memory error; each run on a GPU may count on its share of a
    quarter of that memory (a neighbour's training step has no retry).

    The counts are the runs that can really be at once, not the queue's capacity: the reference run queued alone in a
    13-slot queue (an H200, 2026-11-29) was given 1/13 of a quarter and one CPU thread, and its evaluation batch grew
    only to 64 on an idle GPU."""
    on_gpu = slots if on_this_gpu is None else on_this_gpu
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // max(1, slots))),
            "HARNESS_EVAL_MEMORY_SHARE": f"{0.25 / max(1, on_gpu):.4f}",
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


# Run in the child before the command replaces it (execvp keeps the setting): the kernel sends SIGTERM to the child
# when the thread that started it ends (prctl PR_SET_PDEATHSIG, Linux). RunQueue's thread lives until its last run
# ends, so that is when pytest itself dies: a SIGKILLed pytest left its background fine-tune running for minutes. A
# parent already gone before the call (the child is then adopted) is checked after it.
# Python ignores SIGPIPE and SIGXFSZ at start and an ignored signal survives execvp: both are put back first.
_DIES_WITH_PARENT = ("import ctypes, os, signal, sys; "
                     "ctypes.CDLL(None, use_errno=True).prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGTERM)); "
                     "os.getppid() == int(sys.argv[1]) or os._exit(143); "
                     "[signal.signal(s, signal.SIG_DFL) for s in (signal.SIGPIPE, signal.SIGXFSZ)]; "
                     "os.execvp(sys.argv[2], sys.argv[2:])")


def dies_with_this_process(cmd: list[str]) -> list[str]:
    """`cmd` wrapped so that it is stopped when this process dies (Linux; elsewhere `cmd` unchanged)."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-c", _DIES_WITH_PARENT, str(os.getpid()), *cmd]


# The queues whose runs the report's timeline shows (RunQueue(..., timeline=True)): the session's background work,
# beside its tests (harness.results reads this list when it writes results.json; a unit test's scratch queue stays out).
TIMELINE_QUEUES: list["RunQueue"] = []
# The queues whose runs declared the cores each holds on this host (RunQueue(..., cpu_threads=N)): the CPU session's
# tiny fine-tune (one torch thread). harness.gguf_verify.llama_child_threads gives llama.cpp's children what is left.
CPU_QUEUES: list["RunQueue"] = []


def cpu_threads_held() -> int:
    """The cores held now by the running runs of queues that declared theirs (CPU_QUEUES); 0 where none runs."""
    return sum(queue.threads_running() for queue in list(CPU_QUEUES))


@dataclass
class Run:
    name: str
    folder: Path
    cmd: list[str]
    env: dict | None = None  # this run's own variables, over the queue's


class RunQueue:
    """Start queued runs `slots` at a time in a background thread; `wait(name)` or `wait_all()` for outcomes.

    `devices`: GPU names (CUDA_VISIBLE_DEVICES values) with `slots` runs each, or {name: slots}; each run is started
    with CUDA_VISIBLE_DEVICES set to one of them (recorded in `placed`). None: every run sees what this process sees.
    An outcome reads "complete in N s", "complete (earlier)" or "failed (…): <log tail>". Runs import this
    checkout's harness wherever pytest was started from.
    """

    def __init__(self, slots: int, env: dict | None = None, desc: str = "runs", poll_seconds: float = 2.0,
                 devices: list[str] | dict[str, int] | None = None, gpu_sharing_env: bool = True,
                 timeline: bool = False, cpu_threads: int | None = None):
        # Fine-tunes take minutes: a 2 s poll costs nothing there; the unit tests poll faster.
        if devices is not None and not isinstance(devices, dict):
            devices = {str(d): max(1, slots) for d in devices}
        self.devices = {str(d): n for d, n in devices.items() if n > 0} if devices else None
        if devices is not None and not self.devices:
            raise ValueError(f"no GPU slots in {devices!r}")
        self.slots = sum(self.devices.values()) if self.devices else max(1, slots)
        self.desc, self.poll_seconds = desc, poll_seconds
        self.caller_env = dict(env or {})  # wins over shared_gpu_env's figures
        # False: of shared_gpu_env only the threads (the GPU probes keep the allocator and settings they measure with)
        self.gpu_sharing_env = gpu_sharing_env
        self.env = dict(os.environ)
        self.placed: dict[str, str] = {}  # run name -> the GPU it ran on
        root = str(Path(__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, self.env.get("PYTHONPATH")) if p)
        self.runs: list[Run] = []
        self.outcomes: dict[str, str] = {}
        self.started: dict[str, float] = {}  # time.time() when each run started
        self.ended: dict[str, float] = {}  # ... and when it got its outcome
        self.phases: dict[str, dict] = {}  # a complete run's record's phases (seconds each, in the order they ran)
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        if timeline:
            TIMELINE_QUEUES.append(self)
        # the cores each running run keeps busy on this host, where the caller knows it (cpu_threads_held)
        self.cpu_threads = cpu_threads
        if cpu_threads:
            CPU_QUEUES.append(self)

    def threads_running(self) -> int:
        """cpu_threads for each run started and not yet ended (0 for a queue that declared none)."""
        if not self.cpu_threads:
            return 0
        with self._done:
            return self.cpu_threads * sum(name not in self.ended for name in list(self.started))

    def spans(self) -> list[dict]:
        """Each run started so far: its wall-clock span (time.time(); `end` None while it runs) and its outcome's first
        words (the report's timeline of the session)."""
        spans = []
        with self._done:  # the queue's thread sets a run's end, phases and outcome together under this lock
            for name, start in list(self.started.items()):
                outcome = self.outcomes.get(name)
                spans.append({"queue": self.desc, "name": name, "start": start, "end": self.ended.get(name),
                              "outcome": None if outcome is None else outcome.split(":")[0].splitlines()[0][:80],
                              "phases": self.phases.get(name)})
        return spans

    def _phases_for_timeline(self, record: dict) -> dict | None:
        """A complete run's phases for the report's timeline (harness.record_facts.timeline_phases; queues shown there
        only); never an error of the queue: a record it cannot read gives none."""
        if self not in TIMELINE_QUEUES:
            return None
        try:
            from harness.record_facts import timeline_phases

            return timeline_phases(record)
        except Exception:  # noqa: BLE001 (a cosmetic figure must not stop the runs)
            return None

    def add(self, name: str, folder: Path, cmd: list[str], env: dict | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("RunQueue.add after start: queue every run first")
        if complete(folder):
            self.outcomes[name] = "complete (earlier)"
        else:
            self.runs.append(Run(name, Path(folder), list(cmd), dict(env or {})))

    def run_env(self, device: str | None = None) -> dict:
        """A run's environment: at most min(slots, queued runs) run at once on the host, and on `device` at most
        min(its slots, queued runs)."""
        queued = max(1, len(self.runs))
        on_gpu = min(self.devices[device], queued) if device is not None and self.devices else None
        shared = shared_gpu_env(min(self.slots, queued), on_gpu)
        if not self.gpu_sharing_env:
            shared = {"OMP_NUM_THREADS": shared["OMP_NUM_THREADS"]}
        return {**self.env, **shared, **self.caller_env}

    def start(self) -> "RunQueue":
        self._thread = threading.Thread(target=self._drive, name=f"run-queue {self.desc}", daemon=True)
        self._thread.start()
        return self

    def _finish(self, name: str, outcome: str, phases: dict | None = None) -> None:
        with self._done:
            if name in self.started:
                self.ended.setdefault(name, time.time())
            if phases:
                self.phases[name] = phases
            self.outcomes[name] = outcome
            self._done.notify_all()

    def _drive(self) -> None:
        todo = list(self.runs)
        running: dict[str, tuple[Run, subprocess.Popen, object]] = {}
        where = f" over {len(self.devices)} GPUs" if self.devices else ""
        bar = tqdm(total=len(todo), desc=f"{self.desc} ({self.slots} at a time{where})", unit="run")
        try:
            while (todo or running) and not self._stopping:
                while todo and len(running) < self.slots:
                    run = todo.pop(0)
                    run.folder.mkdir(parents=True, exist_ok=True)
                    log = open(run.folder / "log.txt", "w")
                    self.started[run.name] = time.time()
                    device = None
                    if self.devices:
                        busy = {d: sum(self.placed.get(n) == d for n in running) for d in self.devices}
                        device = max(self.devices, key=lambda d: self.devices[d] - busy[d])  # the most free slots
                        self.placed[run.name] = device
                    env = {**self.run_env(device), **run.env, **({"CUDA_VISIBLE_DEVICES": device} if device else {})}
                    try:
                        proc = subprocess.Popen(dies_with_this_process(run.cmd), stdout=log, stderr=subprocess.STDOUT,
                                                env=env)
                    except OSError as exc:
                        log.close()
                        self._finish(run.name, f"failed to start: {exc}")
                        continue
                    running[run.name] = (run, proc, log)
                time.sleep(self.poll_seconds)
                for name, (run, proc, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    took = time.time() - self.started[name]
                    record = read_record(run.folder)  # read once: whether it is complete, and its phases
                    written = (record or {}).get("complete") is True
                    if proc.returncode == 0 and written:
                        self._finish(name, f"complete in {took:.0f} s", self._phases_for_timeline(record))
                    else:
                        tail = (run.folder / "log.txt").read_text(errors="replace")[-1500:]
                        self._finish(name, f"failed (exit {proc.returncode}, run.json complete: {written}) "
                                           f"after {took:.0f} s: {tail}")
                    del running[name]
                    bar.update()
            why = "stopped at the end of the session"
        except BaseException as exc:
            why = f"the queue stopped ({type(exc).__name__}: {exc})"
            raise
        finally:  # never leave a waiter hanging: every unfinished run is killed and gets an outcome
            for _, proc, log in running.values():
                proc.kill()
                proc.wait()
                log.close()
            for run in self.runs:
                if run.name not in self.outcomes:
                    self._finish(run.name, f"failed: {why}")
            bar.close()

    def wait(self, names: list[str] | str, timeout: float | None = None) -> dict[str, str]:
        """Block until every named run has an outcome (or `timeout` s pass); return those outcomes."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.outcomes and all(r.name != n for r in self.runs)]
        if unknown:
            raise KeyError(f"not queued: {unknown}")
        if self._thread is None:
            self.start()
        with self._done:
            if not self._done.wait_for(lambda: all(n in self.outcomes for n in names), timeout=timeout):
                raise TimeoutError(f"runs still going after {timeout} s: {[n for n in names if n not in self.outcomes]}")
            return {n: self.outcomes[n] for n in names}

    def wait_all(self, timeout: float | None = None) -> dict[str, str]:
        return self.wait([*self.outcomes, *(r.name for r in self.runs)], timeout=timeout)

    def stop(self) -> None:
        """Kill what still runs (end of session): a later session resumes from the complete runs."""
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout=30)
