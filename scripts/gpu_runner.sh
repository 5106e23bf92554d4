#!/usr/bin/env bash
# On an air-gapped CUDA runner: unpack what was carried in .carry/ (the GPU wheel bundle, the pruned
# llama-cpp-python sdist, the tokenizer, the embedded model's GGUF in parts), then run a stage.
#
#   scripts/gpu_runner.sh setup            unpack; build llama-quantize and llama-cpp-python in the background
#   scripts/gpu_runner.sh check            versions of the stack
#   scripts/gpu_runner.sh gpu [pytest …]   pytest -m gpu (--experiments: with the experiment claims), report in $HARNESS_REPORTS (default /tmp/handbook-site/reports)
#   scripts/gpu_runner.sh all [pytest …]   certify --gpu: every claim (CPU tier with CUDA hidden, then GPU tier, the experiments included: over an hour on one GPU), one report
#   scripts/gpu_runner.sh bg [pytest …]    the same, detached (survives the calling shell); then:
#   scripts/gpu_runner.sh wait SECONDS     wait for the detached run (or SECONDS), print the log's tail, collect
#   scripts/gpu_runner.sh collect          copy the report, run record and benchmark JSON into $OUT
#   scripts/gpu_runner.sh poll SECONDS     wait for every detached run (or SECONDS), then pack each run's files so far into
#                                          $OUT/<leg>.tar.xz: every poll brings back what exists, so a machine lost
#                                          between calls (it goes cold 30 s after one) loses only the last interval
#   scripts/gpu_runner.sh run CMD …        any command with the bundle and the model in place
#
# LEG=<leg> (a GPU leg of the release matrix, e.g. unsloth-2026.10.1): put .carry/leg-<leg>.tar.xz (`python -m harness
# bundle --constraints constraints/<leg>.txt --overlay`) in front of the bundle, and keep the leg's reports, run
# records, log and Unsloth's compiled code apart, so that two legs can run at once on two GPUs
# (CUDA_VISIBLE_DEVICES). `collect` then packs the leg's files into $OUT/<leg>.tar.xz (a call brings back 8 files).
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
HS="${HANDBOOK_SITE:-/tmp/handbook-site}"
mkdir -p "$HS"
if [ -f .carry/gpu-bundle.tar.xz ] && [ ! -d "$HS/site" ]; then
  tar -xJf .carry/gpu-bundle.tar.xz -C "$HS" && echo "bundle unpacked: $(du -sm "$HS/site" | cut -f1) MB"
fi
for part in .carry/gguf.part*; do
  [ -f "$part" ] || continue
  name=$(basename "$part")
  [ -f "$HS/$name.done" ] && continue
  cp "$part" "$HS/$name" && touch "$HS/$name.done" && rm -f "$HS/gemma.gguf" && echo "kept $name ($(du -m "$part" | cut -f1) MB)"
done
export PYTHONPATH="$HS/llama-site:$HS/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HARNESS_CACHE="$HS/cache" HARNESS_REPORTS="${HARNESS_REPORTS:-$HS/reports}"
export HARNESS_EXPERIMENTS_DIR="$HS/experiments" HARNESS_E2E_OUT="$HS/e2e" HARNESS_GPU_FAULT_OUT="$HS/gpu-faults"
LEG="${LEG:-}" RUN_NAME="${RUN_NAME:-}"
TAG=""
if [ -n "$RUN_NAME" ] && [ -z "$LEG" ]; then  # a second run on the main stack (e.g. the GPU fault catalog): its own folders
  TAG="-$RUN_NAME"
  export HARNESS_REPORTS="$HS/reports$TAG" HARNESS_EXPERIMENTS_DIR="$HS/experiments$TAG" HARNESS_E2E_OUT="$HS/e2e$TAG"
  export HARNESS_GPU_FAULT_OUT="$HS/gpu-faults$TAG"
fi
if [ -n "$LEG" ]; then
  TAG="-$LEG"
  if [ ! -d "$HS/leg$TAG/site" ]; then
    [ -f ".carry/leg$TAG.tar.xz" ] || { echo "LEG=$LEG: no .carry/leg$TAG.tar.xz (python -m harness bundle --constraints constraints/$LEG.txt --overlay -o .carry/leg$TAG.tar.xz)" >&2; exit 2; }
    mkdir -p "$HS/leg$TAG" && tar -xJf ".carry/leg$TAG.tar.xz" -C "$HS/leg$TAG" && echo "leg $LEG unpacked: $(ls "$HS/leg$TAG/site" | grep dist-info | tr '\n' ' ')"
  fi
  export PYTHONPATH="$HS/leg$TAG/site:$PYTHONPATH" HARNESS_LEG="$LEG"
  export HARNESS_REPORTS="$HS/reports$TAG" HARNESS_EXPERIMENTS_DIR="$HS/experiments$TAG" HARNESS_E2E_OUT="$HS/e2e$TAG"
  export HARNESS_GPU_FAULT_OUT="$HS/gpu-faults$TAG"
fi
# Unsloth compiles patched modules into ./unsloth_compiled_cache by default: one place per leg, not the checkout's
# (a caller's own wins: a probe that must start from cold caches, scripts/probe_generate_warmup.py)
export UNSLOTH_COMPILE_LOCATION="${UNSLOTH_COMPILE_LOCATION:-$HS/unsloth-compiled${TAG:--control}}"
LOG="$HS/gpu-tier$TAG.log" DONE="$HS/gpu-tier$TAG.done"
mkdir -p "$HARNESS_CACHE"
if [ -f .carry/tokenizer-gemma3.tar.xz ] && [ ! -f "$HS/tokenizer.done" ]; then
  tar -xJf .carry/tokenizer-gemma3.tar.xz -C "$HARNESS_CACHE" && touch "$HS/tokenizer.done" && echo "tokenizer unpacked"
fi
SDIST=$(ls .carry/llama-cpp/llama_cpp_python-*.tar.gz 2>/dev/null | head -1)

start_llama_builds() {  # detached: they run on while the next calls bring the model's parts
  [ -n "$SDIST" ] || return 0
  cp "$SDIST" "$HS/" && local sd="$HS/$(basename "$SDIST")"
  if [ ! -f "$HS/llama-quantize.started" ]; then
    touch "$HS/llama-quantize.started"
    setsid nohup bash -c "python3 -m harness llama-cpp --sdist '$sd' --build > '$HS/llama-quantize.log' 2>&1; echo \$? > '$HS/llama-quantize.done'" </dev/null >/dev/null 2>&1 &
  fi
  if [ ! -f "$HS/llama-cpp-python.started" ]; then
    touch "$HS/llama-cpp-python.started"
    # The system compiler: the runner's $CXX (/opt/gcc/bin/g++) links libstdc++ statically into each of
    # llama.cpp's shared libraries, and such a build segfaults loading any GGUF (seen 2026-11-26).
    local cc=""; [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ] && cc="CC=/usr/bin/gcc CXX=/usr/bin/g++"
    # Portable CPU flags (harness/llama_cpp_build.py): a native build segfaults at decode on AVX-512/AMX CPUs.
    setsid nohup bash -c "$cc CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m harness.llama_cpp_build --offline --sdist '$sd' --target '$HS/llama-site' > '$HS/llama-cpp-python.log' 2>&1; echo \$? > '$HS/llama-cpp-python.done'" </dev/null >/dev/null 2>&1 &
  fi
}

wait_llama_builds() {
  for what in llama-quantize llama-cpp-python; do
    [ -f "$HS/$what.started" ] || continue
    for _ in $(seq 1 120); do [ -f "$HS/$what.done" ] && break; sleep 5; done
    echo "$what: exit $(cat "$HS/$what.done" 2>/dev/null || echo 'still running')"; tail -3 "$HS/$what.log"
  done
}

assemble_model() {
  # to a temporary name first: two legs started together must not read a half-written file
  if [ ! -f "$HS/gemma.gguf" ] && ls "$HS"/gguf.part* >/dev/null 2>&1; then
    cat "$HS"/gguf.part?? > "$HS/gemma.gguf.$$" && mv -f "$HS/gemma.gguf.$$" "$HS/gemma.gguf"
  fi
  [ -f "$HS/gemma.gguf" ] && export HARNESS_GGUF="$HS/gemma.gguf"
  return 0
}

collect() {
  [ -n "${OUT:-}" ] || return 0
  local dest="$OUT" pack="${PACK_AS:-${LEG:-$RUN_NAME}}"
  [ -n "$pack" ] && dest="$HS/collect-$pack" && rm -rf "$dest" && mkdir -p "$dest"
  local latest="$HARNESS_REPORTS/latest"
  for f in results.json index.html; do [ -f "$latest/$f" ] && cp "$latest/$f" "$dest/"; done
  [ -f "$HARNESS_REPORTS/benchmark.json" ] && cp "$HARNESS_REPORTS/benchmark.json" "$dest/"
  [ -f "$HARNESS_E2E_OUT/run.json" ] && cp "$HARNESS_E2E_OUT/run.json" "$dest/run-unsloth-e2e.json"
  # its base model's evaluation, run beside it (harness.record_facts.base_eval_dir; merged into the run's record by its
  # test; not named run-unsloth-e2e*: the replay tests read those as reference runs)
  [ -f "$HARNESS_E2E_OUT/base-eval/run.json" ] && cp "$HARNESS_E2E_OUT/base-eval/run.json" "$dest/base-eval-run-unsloth.json"
  for f in "$HARNESS_E2E_OUT"/outputs-*.jsonl; do [ -f "$f" ] && cp "$f" "$dest/"; done  # every output of the reference run
  # the reference run's and its base evaluation's own output (progress bars dropped): what a process did outside its
  # record's phases (~74 s of the reference run's ~660 s on an H200, 2026-11-29: imports, Unsloth's patching, …?)
  # Dynamo's recompile messages keep their guard failures and lose their source stack (each ~40 lines): with the stacks
  # the last 200 kB held only the evaluation's recompiles, not the training's first (2026-11-29, session 17)
  for f in "$HARNESS_E2E_OUT/log.txt" "$HARNESS_E2E_OUT/base-eval/log.txt"; do
    [ -f "$f" ] && grep -v "it/s\]\|s/it\]\|prompt/s\]\|\[__recompiles\]     -  \|\[__graph_breaks\]     -  " "$f" \
      | tail -c 200000 > "$dest/$(basename "$(dirname "$f")")-log.txt"
  done
  # the GPU fault catalog (tests/faults/test_fault_catalog.py -m gpu --faults): each finished run's outcome and results
  for f in "$HARNESS_GPU_FAULT_OUT"/outcome-*.json; do [ -f "$f" ] && cp "$f" "$dest/gpu-fault-$(basename "$f")"; done
  for f in "$HARNESS_GPU_FAULT_OUT"/*/latest/results.json; do
    [ -f "$f" ] && cp "$f" "$dest/gpu-fault-results-$(basename "$(dirname "$(dirname "$f")")").json"
  done
  for f in "$HARNESS_GPU_FAULT_OUT"/*/pytest-log.txt; do  # each run's pytest output so far (progress bars dropped)
    [ -f "$f" ] && grep -v "it/s\]\|s/it\]\|batch/s\]" "$f" | tail -c 300000 > "$dest/gpu-fault-log-$(basename "$(dirname "$f")").txt"
  done
  for f in "$HARNESS_GPU_FAULT_OUT"/*/e2e/run.json; do
    [ -f "$f" ] && cp "$f" "$dest/gpu-fault-run-$(basename "$(dirname "$(dirname "$f")")").json"
  done
  [ -f "$LOG" ] && tail -c 2000000 "$LOG" > "$dest/gpu-tier-log.txt"
  local cpu_log; cpu_log=$(ls -t "$HARNESS_REPORTS"/*.cpu.log 2>/dev/null | head -1)
  [ -n "$cpu_log" ] && tail -c 1000000 "$cpu_log" > "$dest/cpu-tier-log.txt"
  [ -n "$pack" ] && tar -cJf "$OUT/$pack.tar.xz" -C "$dest" . && echo "packed $OUT/$pack.tar.xz: $(ls "$dest" | tr '\n' ' ')"
  ls -la "$OUT"
}

stage="${1:-check}"; shift || true
case "$stage" in
  setup) start_llama_builds; ls -la "$HS" ;;
  check) python3 -c "import torch, unsloth, trl, transformers, bitsandbytes, peft, datasets; print('unsloth', unsloth.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__, 'bnb', bitsandbytes.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" ;;
  gpu)
    start_llama_builds; wait_llama_builds; assemble_model
    mkdir -p "$HARNESS_REPORTS"
    # -v: each test's outcome is in the log as it ends, so a poll (or a lost machine) still names a failed test
    python3 -m pytest -m gpu -p no:cacheprovider -v --durations=0 --benchmark-json="$HARNESS_REPORTS/benchmark.json" "$@" ;;
  all)  # every claim: certify --gpu (the CPU tier with CUDA hidden, then the GPU tier, one merged report)
    start_llama_builds; wait_llama_builds; assemble_model
    mkdir -p "$HARNESS_REPORTS"
    python3 -m harness certify --gpu -- --durations=0 --benchmark-json="$HARNESS_REPORTS/benchmark.json" "$@" ;;
  bg)  # BG_STAGE=all for certify --gpu; default: the GPU tier alone
    rm -f "$DONE"
    args=$(printf '%q ' "$@")
    setsid nohup bash -c "start=\$(date +%s); scripts/gpu_runner.sh ${BG_STAGE:-gpu} $args > '$LOG' 2>&1; echo \"exit \$? after \$((\$(date +%s) - start)) s\" > '$DONE'" </dev/null >/dev/null 2>&1 &
    echo "${LEG:-${RUN_NAME:-${HARNESS_LEG:-control}}} ${LEG:--} ${RUN_NAME:--}" >> "$HS/runs.started"  # for poll: the name to pack as, the overlay, the run
    echo "${BG_STAGE:-gpu}${LEG:+ (leg $LEG)} started in the background: log $LOG" ;;
  poll)
    limit="${1:-540}"; waited=0
    # runs.started: "name leg run", "-" for none (an older line has no run); LEG wins over RUN_NAME, as above
    tag_of() { if [ -n "$1" ] && [ "$1" != - ]; then echo "-$1"; elif [ -n "$2" ] && [ "$2" != - ]; then echo "-$2"; fi; }
    pending() {
      local name leg run
      while read -r name leg run; do [ -f "$HS/gpu-tier$(tag_of "$leg" "$run").done" ] || return 0; done < "$HS/runs.started"
      return 1
    }
    [ -f "$HS/runs.started" ] || { echo "no detached run was started (scripts/gpu_runner.sh bg)" >&2; exit 2; }
    [ -n "${OUT:-}" ] || echo "OUT is not set: waiting only, nothing is packed" >&2
    while pending && [ "$waited" -lt "$limit" ]; do sleep 10; waited=$((waited + 10)); done
    while read -r name leg run; do
      tag=$(tag_of "$leg" "$run")
      echo "== $name: $(cat "$HS/gpu-tier$tag.done" 2>/dev/null || echo "still running after ${waited} s")"
      grep -v "it/s\]\|s/it\]\|batch/s\]" "$HS/gpu-tier$tag.log" | tail -c 800; echo
      # each run's own folders: the child sets them from LEG/RUN_NAME, not from this shell's (they are inherited)
      env -u HARNESS_REPORTS -u HARNESS_E2E_OUT -u HARNESS_GPU_FAULT_OUT -u HARNESS_EXPERIMENTS_DIR \
        LEG="${leg#-}" RUN_NAME="${run#-}" PACK_AS="$name" "$SELF" collect </dev/null | grep packed
    done < "$HS/runs.started" ;;
  wait)
    limit="${1:-540}"; waited=0
    while [ ! -f "$DONE" ] && [ "$waited" -lt "$limit" ]; do sleep 10; waited=$((waited + 10)); done
    tail -c 3000 "$LOG"; echo; cat "$DONE" 2>/dev/null || echo "still running after ${waited} s"
    collect ;;
  collect) collect ;;
  run) assemble_model; "$@" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
