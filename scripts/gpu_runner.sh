#!/usr/bin/env bash
# On an air-gapped CUDA runner: unpack the GPU bundle, assemble the embedded model's GGUF from parts
# brought in earlier calls, and run a stage. Usage: scripts/gpu_runner.sh setup|check|gpu [pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."
HS=/tmp/handbook-site
mkdir -p "$HS"
if [ -f .carry/gpu-bundle.tar.xz ] && [ ! -d "$HS/site" ]; then
  tar -xJf .carry/gpu-bundle.tar.xz -C "$HS" && echo "bundle unpacked: $(du -sm "$HS/site" | cut -f1) MB"
fi
for part in .carry/gguf.part*; do
  [ -f "$part" ] || continue
  name=$(basename "$part")
  [ -f "$HS/$name.done" ] && continue
  cp "$part" "$HS/$name" && touch "$HS/$name.done" && echo "kept $name ($(du -m "$part" | cut -f1) MB)"
done
export PYTHONPATH="$HS/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HARNESS_CACHE="$HS/cache" HARNESS_REPORTS="${OUT:-$HS}/reports"
stage="${1:-check}"; shift || true
case "$stage" in
  setup) ls -la "$HS" ;;
  check) python3 -c "import torch, unsloth, trl, transformers, bitsandbytes, peft, datasets; print('unsloth', unsloth.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__, 'bnb', bitsandbytes.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" ;;
  gpu)
    if [ ! -f "$HS/gemma.gguf" ]; then cat "$HS"/gguf.part* > "$HS/gemma.gguf"; fi
    export HARNESS_GGUF="$HS/gemma.gguf"
    python3 -m pytest -m gpu -p no:cacheprovider -q "$@" ;;
  run)  # any command with the bundle and the model in place, e.g. run python3 -m harness finetune ...
    if [ ! -f "$HS/gemma.gguf" ]; then cat "$HS"/gguf.part* > "$HS/gemma.gguf"; fi
    export HARNESS_GGUF="$HS/gemma.gguf"
    "$@" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
