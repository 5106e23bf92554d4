"""The client of a `python -m harness.step_server` process (standard library only: the GPU tier's conftest and
tests/gpu/test_performance.py import it at collection, which must not import transformers).

`StepServer(backend, model)` returns once the server's warm-up steps are done (its "ready"). With `hold=True` it
returns at once: the server loads meanwhile, `warm()` lets it start its warm-up steps once loaded, `wait_ready()` waits
for their end. The GPU tier starts both backends' servers held at session start and warms them once the reference
fine-tune is done, beside its GGUF checks; the timed rounds still run with the GPU to itself. Measured before, on one
H200 (2026-11-29, reports/examples/h200-2026-11-29-gpu-tier-without-experiments): the two timings took 268 s at the
end of the tier, 181 s of it Unsloth's (96 s its first, compiling step) and 87 s the HF backend's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class StepServer:
    """`step()` runs one training step in the server and returns when its CUDA work is done."""

    def __init__(self, backend: str, model: str, warmup: int = 20, hold: bool = False, command: list[str] | None = None):
        """command: another server speaking the same protocol (the unit tests' stand-in for the real trainer)."""
        self.backend = backend
        self.log = tempfile.TemporaryFile(mode="w+")
        server = [sys.executable, "-m", "harness.step_server", "--backend", backend, "--model", model]
        self.proc = subprocess.Popen([*(command or server), "--warmup", str(warmup), *(["--hold"] if hold else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1, cwd=ROOT)
        self.tokens: list[int] = []
        self.error = ""
        self.state = "held" if hold else "warming"
        self.warm_seconds: float | None = None  # from "warm" to "ready" (hold=True)
        self._warm_sent: float | None = None
        if not hold:
            self.wait_ready()

    def _read_until(self, *wanted: str) -> str:
        """The first line that is one of the protocol's words ("loaded", "ready") or starts with one of its prefixes
        ("done ", '{"backend"'): libraries print banners to stdout too, and a banner may begin with a word."""
        self._raise_if_dead()
        for line in self.proc.stdout:
            if any(line.strip() == w if w.isalpha() else line.startswith(w) for w in wanted):
                return line
        self._died(f"before printing {' or '.join(map(repr, wanted))}")

    def _send(self, line: str) -> None:
        self._raise_if_dead()
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._died(f"before reading {line!r}")

    def _died(self, when: str):
        code = self.proc.wait()
        self.state = "exited"
        self.log.seek(0)
        self.error = f"step server ({self.backend}) exited (code {code}) {when}:\n{self.log.read()[-3000:]}"
        raise AssertionError(self.error)

    def _raise_if_dead(self) -> None:
        """A server that died earlier (seen by another thread or call) says so again, with its log."""
        if self.state == "exited":
            raise AssertionError(self.error)

    def warm(self) -> None:
        """(hold=True) Wait until the server has loaded, then let it run its warm-up steps."""
        if self.state != "held":
            return
        if self._read_until("loaded", "ready").strip() == "ready":
            # a trainer loop that never called on_train_begin warmed up without waiting: waiting for "loaded" here
            # would deadlock with the server waiting for "step"
            self.state = "ready"
            return
        self._send("warm")
        self._warm_sent, self.state = time.perf_counter(), "warming"

    def wait_ready(self) -> None:
        self._raise_if_dead()
        self.warm()
        if self.state == "warming":
            self._read_until("ready")
            self.state = "ready"
            if self._warm_sent is not None:
                self.warm_seconds = round(time.perf_counter() - self._warm_sent, 1)

    def step(self) -> None:
        self._send("step")
        self.tokens.append(int(self._read_until("done ").split()[1]))

    def close(self) -> dict:
        """Stop training; the server's JSON line (warm-up seconds, peak memory)."""
        self._send("stop")
        stats = json.loads(self._read_until('{"backend"'))  # the trainer also prints {'loss': …} dicts
        self.proc.wait(timeout=120)
        self.state = "closed"
        return stats

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.state != "closed":
            self.state, self.error = "exited", self.error or f"step server ({self.backend}) was stopped"
