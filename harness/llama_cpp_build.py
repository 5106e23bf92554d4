"""llama-cpp-python built for a portable CPU baseline, once per machine, never from pip's wheel cache.

llama-cpp-python is source-only on PyPI. Built with llama.cpp's defaults (`GGML_NATIVE=ON`, i.e.
`-march=native`) on a CPU with AVX-512 and AMX, the library loads every GGUF and then segfaults in
`llama_decode`, Google's own Q4_K_M file included (seen 2026-11-27 on a fresh 2-core x86 machine;
the same sdist built with `-DGGML_NATIVE=OFF` decodes there). A native build also breaks the next
CPU: pip caches the built wheel keyed by the sdist alone, not by the flags or the CPU, and hands it
to any later install. So this module builds with `GGML_NATIVE=OFF` (llama.cpp then enables the
x86-64-v3 set: SSE4.2, AVX, AVX2, BMI2, FMA, F16C) with pip's cache off, keeps the wheel in the
harness cache under a key of version + flags + platform, and installs exactly that wheel.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.cache import build_once, cache_root

VERSION = "0.3.36"
PIN = f"llama-cpp-python=={VERSION}"
INSTALL_HINT = f"python -m harness.llama_cpp_build (bash scripts/install.sh runs it): builds {PIN} for a portable CPU"
# LLAVA off: the multimodal helper is not used and adds a third of the build time.
PORTABLE_CMAKE_ARGS = ("-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=OFF")


class BuildError(RuntimeError):
    """The wheel could not be built or installed; the message says what to do."""


def cmake_args(extra: str = "") -> str:
    """The CMAKE_ARGS of the build: the portable flags, then the user's (which may add, never drop, them)."""
    args = list(PORTABLE_CMAKE_ARGS)
    for flag in extra.split():
        if flag.upper().startswith("-DGGML_NATIVE=") and flag.upper() != "-DGGML_NATIVE=OFF":
            raise BuildError(f"CMAKE_ARGS asks for {flag}: a native build crashes on other CPUs (and on AVX-512/AMX "
                             "machines at decode); unset it, the suite builds llama.cpp for a portable baseline")
        if flag not in args:
            args.append(flag)
    return " ".join(args)


def wheel_key(args: str, compiler: str = "") -> str:
    """A cache key that changes with everything that changes the built machine code."""
    text = "|".join([VERSION, args, compiler, platform.machine(), f"py{sys.version_info[0]}{sys.version_info[1]}"])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _wheels(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"llama_cpp_python-{VERSION}-*.whl"))


def build_wheel(sdist: Path | None = None, extra_cmake_args: str | None = None, jobs: int | None = None,
                offline: bool = False, log=print) -> Path:
    """The portable wheel, from the harness cache or built now (pip's cache off, so no stale wheel comes in)."""
    extra = os.environ.get("CMAKE_ARGS", "") if extra_cmake_args is None else extra_cmake_args
    args = cmake_args(extra)
    compiler = f"{os.environ.get('CC', '')}/{os.environ.get('CXX', '')}"
    folder = cache_root() / "wheels" / f"llama-cpp-python-{VERSION}-{wheel_key(args, compiler)}"

    def build(tmp: Path) -> None:
        env = {**os.environ, "CMAKE_ARGS": args, "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs or os.cpu_count() or 2)}
        source = str(sdist) if sdist else PIN
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "--no-binary",
               "llama-cpp-python", source, "-w", str(tmp)]
        if offline:  # an air-gapped runner: the build backend from the environment, nothing from an index
            cmd += ["--no-build-isolation", "--no-index"]
        log(f"building {PIN} with CMAKE_ARGS='{args}' (a few minutes on 2 cores; once per machine) …")
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as output:
            proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, text=True, env=env)
            beat = 30
            while proc.poll() is None:  # a heartbeat: the build is silent for minutes
                time.sleep(1)
                if time.perf_counter() - start >= beat:
                    log(f"  still building ({beat} s)")
                    beat += 30
            output.seek(0)
            text = output.read()
        if proc.returncode != 0:
            raise BuildError(f"building {PIN} failed (cmake and a C++ compiler are needed; `apt-get install cmake "
                             f"g++` or `pip install cmake`):\n{text[-2500:]}")
        (tmp / "BUILD.txt").write_text(f"CMAKE_ARGS={args}\ncompiler={compiler}\nseconds="
                                       f"{time.perf_counter() - start:.0f}\n")
        log(f"built in {time.perf_counter() - start:.0f} s")

    build_once(folder, build, lambda f: bool(_wheels(f)))
    return _wheels(folder)[-1]


def install(sdist: Path | None = None, target: Path | None = None, offline: bool = False, log=print) -> Path:
    """Build (or reuse) the portable wheel and install it, replacing any other build in the environment."""
    wheel = build_wheel(sdist, offline=offline, log=log)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)]
    if target:
        cmd += ["--target", str(target), "--upgrade"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0 and target is None and not offline:  # its dependencies (diskcache, …) from the index, the wheel as it is
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"installing {wheel.name} failed:\n{(proc.stdout + proc.stderr)[-1500:]}")
    log(f"installed {wheel.name} ({wheel.parent.name})")
    return wheel


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.llama_cpp_build", description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="a local llama-cpp-python sdist (else PyPI)")
    parser.add_argument("--target", type=Path, help="install into this folder (pip --target) instead of the environment")
    parser.add_argument("--offline", action="store_true", help="no package index: build with the installed backend")
    args = parser.parse_args(argv)
    try:
        install(args.sdist, args.target, args.offline)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
