"""An offline wheelhouse of the GPU extra for air-gapped runners (`python -m harness bundle`).

It downloads binary wheels for the target Python and platform, prunes what a runner never loads
(Unsloth's `studio/` web UI, bitsandbytes builds for other CUDA/ROCm/XPU versions), and packs the
wheels *unpacked* into one tar.xz. On the runner:

    mkdir -p /opt/handbook-site && tar -xJf gpu-bundle.tar.xz -C /opt/handbook-site
    export PYTHONPATH=/opt/handbook-site/site:$PYTHONPATH

(Unpacked, not installed with pip: the runner's torch/CUDA stay as they are.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# What a CUDA runner with torch, transformers, peft and accelerate lacks for the handbook's stack
# (read off the H100 runner, shared/notes.md). Versions: the control leg.
GPU_REQUIREMENTS = [
    "unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "bitsandbytes==0.50.2", "trl==1.15.0", "datasets==4.8.5",
    "gguf==0.19.0", "tyro", "msgspec", "cut_cross_entropy", "hf_transfer", "torchao", "diffusers", "pydantic",
    "pydantic-core", "annotated-types", "typing-inspection", "json5", "structlog", "nest-asyncio", "docstring-parser",
    "typeguard", "shtab", "dill", "multiprocess", "xxhash",
    # llama-cpp-python (built on the runner from the vendored sdist, harness.llama_cpp_vendor) imports it
    "diskcache",
]
# A runner that lacks transformers, peft or accelerate too passes them with --extra (e.g. --extra
# transformers==5.17.0 peft==0.21.2 accelerate==1.15.0; the H100 runner has transformers 5.17.0, peft 0.21).
KEEP_BNB = ("libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so")


def download(requirements: list[str], python: str, platform: str, dest: Path) -> list[Path]:
    """`pip download` binary wheels (no dependencies resolved: the list is explicit) for the target."""
    version = python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", version,
           "--implementation", "cp", "-d", str(dest), "-q"]
    for tag in (platform, "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
                "manylinux_2_24_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "linux_x86_64", "any"):
        cmd += ["--platform", tag]
    for req in requirements:
        subprocess.run(cmd + [req], check=True)
    return sorted(dest.glob("*.whl"))


def prune(site: Path) -> list[str]:
    """Remove what a runner never loads; returns what was removed."""
    removed = []
    for studio in (site / "unsloth" / "studio", site / "studio"):  # Unsloth's web UI (~80 MB), never imported
        if studio.exists():
            shutil.rmtree(studio)
            removed.append(str(studio.relative_to(site)))
    for lib in (site / "bitsandbytes").glob("libbitsandbytes_*"):
        if lib.name not in KEEP_BNB:
            lib.unlink()
            removed.append(f"bitsandbytes/{lib.name}")
    return removed


def _name(requirement: str) -> str:
    """The normalized project name of `NAME==VERSION` or `NAME` (PEP 503: case, '-', '_' and '.' alike)."""
    import re

    return re.sub(r"[-_.]+", "-", re.split(r"[=<>!~;\[ ]", requirement.strip(), maxsplit=1)[0]).lower()


def read_pins(constraints: Path) -> dict[str, str]:
    """{normalized name: NAME==VERSION} from a leg's constraints file (constraints/<leg>.txt), read as the release
    matrix reads it (harness.matrix.pins), strictly: a line that is not a pin is an error."""
    from harness.matrix import pins

    return {_name(name): f"{name}=={version}" for name, version in pins(constraints, strict=True).items()}


def leg_requirements(pins: dict[str, str], overlay: bool, control_pins: dict[str, str] | None = None) -> list[str]:
    """What a leg's bundle holds. Not an overlay: the control bundle's list with each pinned package at the leg's
    version (and the leg's other pins added). An overlay: only the pins whose version differs from the control leg's
    (its bundle's list and constraints/control.txt, which also pins what the runner brings, e.g. transformers), to go
    in front of the control bundle on PYTHONPATH: a transfer to an air-gapped runner is capped, and the overlay of
    unsloth-2026.10.1 is ~3 MB where a whole bundle is ~17 MB."""
    bundled = {_name(r): r for r in GPU_REQUIREMENTS}
    if overlay:
        control = {**bundled, **(control_pins or {})}
        return [pin for name, pin in pins.items() if control.get(name) != pin]
    return [pins.get(name, req) for name, req in bundled.items()] + [p for n, p in pins.items() if n not in bundled]


def build_bundle(python: str, platform: str, output: Path, extra: list[str] | None = None,
                 constraints: Path | None = None, overlay: bool = False) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if overlay and constraints is None:
        raise ValueError("--overlay needs --constraints: an overlay holds what a leg pins differently from the control")
    if constraints is None:
        requirements = list(GPU_REQUIREMENTS)
    else:
        control_file = Path(constraints).with_name("control.txt")
        requirements = leg_requirements(read_pins(constraints), overlay,
                                        read_pins(control_file) if control_file.is_file() else None)
        if not requirements:
            raise ValueError(f"{constraints} pins nothing the control does not: an overlay would be empty")
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download(requirements + list(extra or []), python, platform, Path(tmp) / "wheels")
        site = Path(tmp) / "site"
        site.mkdir()
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        removed = prune(site)
        (site / "BUNDLE.txt").write_text("\n".join(["wheels:"] + [w.name for w in wheels] + ["pruned:"] + removed) + "\n")
        with tarfile.open(output, "w:xz", preset=6) as tar:
            tar.add(site, arcname="site")
    return output
