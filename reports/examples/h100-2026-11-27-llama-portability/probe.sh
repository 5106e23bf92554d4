#!/usr/bin/env bash
# Run on a GPU runner (its CPU: a recent Xeon) from the repo root, with .carry/llama-cpp/<pruned sdist> and
# .carry/probe/*.gguf carried: build llama-cpp-python 0.3.36 natively (pip's default flags) and portably
# (harness.llama_cpp_build), then decode each GGUF with each build in a child process.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
D=reports/examples/h100-2026-11-27-llama-portability
{ lscpu | grep -E "Model name|^CPU\(s\)"; grep -m1 -o -w 'avx512[a-z_0-9]*\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; } > "$OUT/cpu.txt" 2>&1
grep -o -w 'avx512[a-z_0-9]*\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ' >> "$OUT/cpu.txt"; echo >> "$OUT/cpu.txt"
SDIST=$(ls .carry/llama-cpp/llama_cpp_python-*.tar.gz)
export CC=/usr/bin/gcc CXX=/usr/bin/g++
start=$(date +%s)
( CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=8 python3 -m pip wheel -q --no-deps --no-cache-dir \
    --no-build-isolation --no-index "$SDIST" -w /tmp/w-native \
  && python3 -m pip install -q --no-deps --no-index --target /tmp/site-native /tmp/w-native/*.whl ) > "$OUT/build-native.log" 2>&1 &
( HARNESS_CACHE=/tmp/hc python3 -m harness.llama_cpp_build --offline --sdist "$SDIST" --target /tmp/site-portable ) \
  > "$OUT/build-portable.log" 2>&1 &
wait
echo "builds: $(( $(date +%s) - start )) s" >> "$OUT/cpu.txt"
for mode in native portable; do
  for f in .carry/probe/*.gguf; do
    PYTHONPATH=/tmp/site-$mode:$(ls .carry/probe/diskcache-*.whl) timeout 300 python3 "$D/decode.py" "$f" > /tmp/res.json 2> /tmp/err.txt
    rc=$?
    echo "{\"build\": \"$mode\", \"file\": \"$(basename "$f")\", \"exit\": $rc, \"out\": $(cat /tmp/res.json 2>/dev/null || echo null)}" >> "$OUT/decode.jsonl"
    [ $rc -ne 0 ] && tail -5 /tmp/err.txt >> "$OUT/decode-errors.txt"
  done
done
cat "$OUT/cpu.txt" "$OUT/decode.jsonl"
