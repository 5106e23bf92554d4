"""llama.cpp without GitHub: the tree vendored in llama-cpp-python's source distribution on PyPI.

Unsloth's `save_pretrained_gguf` needs llama.cpp's converter (convert_hf_to_gguf.py with its
conversion/ and gguf-py/ siblings) and a `llama-quantize` binary in the folder root. By default it
git-clones llama.cpp and downloads the converter at every export, which fails on an air-gapped
runner. The llama-cpp-python sdist (76 MB) vendors the whole tree; pruned to what the converter and
`llama-quantize` need it packs to a few MB, small enough to carry to a GPU runner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from harness.cache import build_once, cache_root, sha256_file
from harness.llama_cpp_build import VERSION as SDIST_VERSION
# Top-level entries the converter and the llama-quantize build read; the rest (docs, 75 MB of test
# vocabularies in models/, examples, the web UI) is dropped.
KEEP_TOP = {"CMakeLists.txt", "app", "cmake", "common", "conversion", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py",
            "gguf-py", "ggml", "include", "src", "tools", "vendor", "LICENSE", "licenses", "pyproject.toml",
            "requirements", "requirements.txt"}
# Accelerator backends are only compiled when enabled; the converter and a CPU llama-quantize need none.
DROP_GGML_BACKENDS = {"ggml-cann", "ggml-cuda", "ggml-et", "ggml-hexagon", "ggml-hip", "ggml-metal", "ggml-musa",
                      "ggml-opencl", "ggml-openvino", "ggml-sycl", "ggml-virtgpu", "ggml-vulkan", "ggml-webgpu",
                      "ggml-zdnn", "ggml-zendnn"}
DROP_TOOLS = {"ui", "server", "cli"}  # built only with LLAMA_BUILD_SERVER, which stays off
QUANTIZER = "llama-quantize"
# In the sdist but outside what pip builds: git objects (38 MB), docs, tests, examples, media files.
DROP_SDIST_TOP = {".git", "docs", "tests", "examples", "docker", "scripts"}
DROP_SUFFIXES = {".mp4", ".png", ".jpg", ".jpeg", ".gif", ".wav", ".mp3", ".gguf", ".pack", ".webp", ".ico"}


# What a run records when it found no vendored tree to export with (harness.train_unsloth): an environment problem of
# the machine that ran it (harness.record_facts.unsloth_gguf), not of the export
NO_TREE = "no vendored llama.cpp: run `python -m harness llama-cpp --build` first"


class LlamaCppError(RuntimeError):
    """The vendored llama.cpp could not be fetched, unpacked or built; the message says what to do."""


def download_sdist(dest: Path, version: str = SDIST_VERSION) -> Path:
    """`pip download` llama-cpp-python's sdist (PyPI only; no GitHub) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{version}.tar.gz"
    if (dest / name).exists():
        return dest / name
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (dest / name).exists():
        raise LlamaCppError(f"could not download llama-cpp-python=={version} from the package index "
                            f"({proc.stderr.strip()[-400:]}); pass --sdist with a local copy of {name}")
    return dest / name


def _kept(parts: tuple[str, ...]) -> bool:
    if not parts or parts[0] not in KEEP_TOP or Path(parts[-1]).suffix.lower() in DROP_SUFFIXES:
        return False
    if parts[:2] == ("ggml", "src") and len(parts) > 2 and parts[2] in DROP_GGML_BACKENDS:
        return False
    return not (parts[0] == "tools" and len(parts) > 1 and parts[1] in DROP_TOOLS)


def unpack_pruned(sdist: Path, dest: Path) -> Path:
    """Extract the sdist's vendor/llama.cpp into `dest`, keeping only what the converter and quantizer need."""
    prefix = ("vendor", "llama.cpp")
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts[1:]  # strip llama_cpp_python-<version>/
            if parts[:2] != prefix or not _kept(parts[2:]) or not (member.isfile() or member.isdir()):
                continue
            target = dest.joinpath(*parts[2:])
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            target.chmod(member.mode & 0o777 | 0o600)
    if not (dest / "convert_hf_to_gguf.py").exists():
        raise LlamaCppError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py: not a llama-cpp-python sdist?")
    # Where the tree came from, for run records and for the user reading the folder.
    (dest / "VENDORED_FROM.txt").write_text(f"{sdist.name} (PyPI) vendor/llama.cpp, pruned by harness.llama_cpp_vendor\n")
    return dest


def prune_sdist(sdist: Path, out_dir: Path) -> Path:
    """The same sdist with its vendor/llama.cpp pruned (76 → ~5 MB): still installable with pip, so one
    small file carries both llama.cpp's converter tree and the llama-cpp-python bindings to a runner."""
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / sdist.name
    with tarfile.open(sdist) as src, tarfile.open(output, "w:gz", compresslevel=9) as dst:
        for member in src.getmembers():
            parts = Path(member.name).parts[1:]
            if parts and parts[0] in DROP_SDIST_TOP or ".git" in parts:
                continue
            if parts[:2] == ("vendor", "llama.cpp") and len(parts) > 2 and not _kept(parts[2:]):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return output


def build_quantizer(tree: Path, jobs: int | None = None) -> dict:
    """Build `llama-quantize` (CPU, static) with cmake and put it in the tree's root, where Unsloth looks."""
    if shutil.which("cmake") is None:
        raise LlamaCppError("cmake is not installed: `pip install cmake` or your system's package, then retry")
    jobs = jobs or os.cpu_count() or 2
    build = tree / "build"
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF",
             "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF"]
    start = time.perf_counter()
    for cmd in (["cmake", "-S", str(tree), "-B", str(build), *flags],
                ["cmake", "--build", str(build), "--target", QUANTIZER, "-j", str(jobs)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LlamaCppError(f"`{' '.join(cmd[:3])} …` failed:\n{(proc.stdout + proc.stderr)[-2500:]}")
    built = build / "bin" / QUANTIZER
    shutil.copy2(built, tree / QUANTIZER)
    return {"quantizer": str(tree / QUANTIZER), "build_seconds": round(time.perf_counter() - start, 1), "jobs": jobs}


def _tree_complete(folder: Path) -> bool:
    return (folder / "convert_hf_to_gguf.py").exists() and (folder / "gguf-py" / "gguf" / "__init__.py").exists()


def vendored_tree(sdist: Path | None = None, version: str = SDIST_VERSION) -> Path:
    """The pruned tree in the harness cache, fetched from PyPI and unpacked once."""
    target = cache_root() / f"llama.cpp-{version}"

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as dl:
            unpack_pruned(sdist or download_sdist(Path(dl), version), tmp)

    return build_once(target, build, _tree_complete)


def find_tree() -> Path | None:
    """A vendored tree already present ($HARNESS_LLAMA_CPP, else the cache), or None: never downloads."""
    explicit = os.environ.get("HARNESS_LLAMA_CPP")
    candidates = [Path(explicit)] if explicit else sorted(cache_root().glob("llama.cpp-*"))
    for folder in candidates:
        if folder.is_dir() and _tree_complete(folder):
            return folder
    return None


def unsloth_env(tree: Path) -> dict[str, str]:
    """The variables that make Unsloth's GGUF export use this tree and never the network."""
    tree = Path(tree).resolve()  # absolute: the export runs inside the run's folder (harness.train_unsloth)
    return {"UNSLOTH_LLAMA_CPP_PATH": str(tree), "UNSLOTH_LLAMA_CPP_SCRIPTS_DIR": str(tree),
            "UNSLOTH_LLAMA_CPP_OFFLINE": "1"}


def convert(tree: Path, checkpoint: Path, out_file: Path, outtype: str = "q8_0") -> dict:
    """Run llama.cpp's own converter (the one Unsloth calls) on an HF checkpoint; offline."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    # Without NO_LOCAL_GGUF the converter imports the gguf-py beside it, its own version.
    env = {**{k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", outtype,
                           "--outfile", str(out_file)], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not out_file.exists():
        raise LlamaCppError(f"llama.cpp's converter failed on {checkpoint}:\n{(proc.stdout + proc.stderr)[-2500:]}")
    return {"file": str(out_file), "seconds": round(time.perf_counter() - start, 1), "converter": str(tree / "convert_hf_to_gguf.py")}


def _tree_digest(tree: Path) -> str:
    """sha256 over the converter's own code in the vendored tree: convert_hf_to_gguf.py, conversion/ and gguf-py/."""
    import hashlib

    digest = hashlib.sha256()
    files = [tree / "convert_hf_to_gguf.py", *sorted((tree / "conversion").rglob("*.py")),
             *sorted((tree / "gguf-py").rglob("*.py"))]
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def convert_once(tree: Path, checkpoint: Path, out_file: Path, outtype: str = "q8_0") -> dict:
    """convert()'s file, made once per distinct input and kept in the cache (harness.measure_cache's rule: the key names
    everything the bytes depend on: the converter's code in the tree, every file of the checkpoint, the libraries it
    imports, the Python and the CPU's vector features); `out_file` is used only with the cache off
    (HARNESS_MEASUREMENT_CACHE=0, as in the fault runs).

    Why: llama.cpp's converter is the independent reference this project's exporter is compared with, not the code
    under test, and it is a pure function of those inputs; a fresh Python with torch and transformers took 8.2 s of
    each warm `certify` on 2 cores (2026-11-29) to write the same 25 MB again."""
    import json

    from harness import measure_cache as mc

    if not mc.enabled():
        return {**convert(tree, checkpoint, out_file, outtype), "cached": False}
    inputs = {"tree": _tree_digest(tree), "checkpoint": mc.folder_digest(checkpoint, tuple(sorted(
                  p.name for p in Path(checkpoint).iterdir() if p.is_file()))), "outtype": outtype,
              "versions": mc.versions("torch", "transformers", "numpy", "sentencepiece", "tokenizers", "safetensors",
                                      "protobuf"),
              "cpu": mc.cpu_signature(), "code": mc.code_digest(convert),
              # the converter writes the folder's name into the file where the config names no model
              "dir_name": Path(checkpoint).name}
    key = mc.entry_key("llama-cpp-convert", inputs)[:32]
    name = "model.gguf"
    built: dict = {}

    def build(tmp: Path) -> None:
        built.update(convert(tree, checkpoint, tmp / name, outtype))
        (tmp / name).chmod(0o444)  # handed out for reading: a test that wrote to it would change every later run's
        (tmp / "convert.json").write_text(json.dumps({"inputs": inputs, "seconds": built["seconds"],
                                                      "sha256": sha256_file(tmp / name)}, default=str))

    def intact(folder: Path) -> bool:  # a file changed or cut short since it was made is made again
        try:  # file_digest: hashed once per process while its size and mtime stay (this runs twice on a hit)
            record = json.loads((folder / "convert.json").read_text())
            return (folder / name).is_file() and mc.file_digest(folder / name) == record["sha256"]
        except (OSError, ValueError, KeyError):
            return False

    target = cache_root() / "llama-cpp-converted" / key
    if target.exists() and not intact(target):
        print(f"llama.cpp converter cache: {target} does not match its sha256: converting again", file=sys.stderr)
    target = build_once(target, build, intact)
    seconds = json.loads((target / "convert.json").read_text())["seconds"]
    return {"file": str(target / name), "seconds": seconds, "converter": str(tree / "convert_hf_to_gguf.py"),
            "cached": not built}
