"""Time `python -m harness certify` and write the timing as JSON (issue #13: timings live in a file, not in a test).

    .venv/bin/python scripts/time_certify.py --out timing.json [-- certify arguments]
    .venv/bin/python scripts/time_certify.py --results reports/<run>/results.json --wall 113.8 --out timing.json

The first form runs certify once (warm the model cache first: the first certify materializes it); the second
summarizes a run already made (its wall time read from `/usr/bin/time`). Either way: wall seconds, pytest's own
seconds (the sum of per-test durations), the machine, the suite's commit and source digest, and the slowest tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(results: Path, wall_s: float, exit_code: int | None, slowest: int = 15) -> dict:
    data = json.loads(Path(results).read_text())
    env = data.get("environment") or {}
    durations = data.get("durations") or {}
    return {
        "wall_s": round(wall_s, 2), "exit_code": exit_code, "tests": len(durations),
        "tests_seconds": round(sum(durations.values()), 2),
        "self_tests_not_run": ((data.get("extras") or {}).get("self_tests_not_run") or {}).get("count", 0),
        "run": data.get("run"), "command": env.get("command"),
        "suite": {k: env.get(k) for k in ("git_commit", "git_dirty", "source_digest")},
        "machine": {"cpu": cpu_model(), "cpu_count": env.get("cpu_count"), "python": env.get("python")},
        "packages": {k: (env.get("packages") or {}).get(k) for k in ("torch", "transformers", "trl", "peft", "llama_cpp_python")},
        "slowest": [{"test": k, "seconds": v} for k, v in sorted(durations.items(), key=lambda kv: -kv[1])[:slowest]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", help="summarize this results.json instead of running certify")
    parser.add_argument("--wall", type=float, help="with --results: the run's wall seconds")
    parser.add_argument("certify_args", nargs="*")
    args = parser.parse_args(argv)
    if args.results:
        if args.wall is None:
            parser.error("--results needs --wall")
        timing = summarize(Path(args.results), args.wall, None)
    else:
        start = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "harness", "certify", *args.certify_args], cwd=ROOT).returncode
        wall = time.monotonic() - start
        from harness.results import reports_root

        timing = summarize(reports_root() / "latest" / "results.json", wall, code)
    Path(args.out).write_text(json.dumps(timing, indent=1) + "\n")
    print(f"certify wall {timing['wall_s']} s, {timing['tests']} tests: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
