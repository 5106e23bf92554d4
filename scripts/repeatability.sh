#!/usr/bin/env bash
# Run the CPU tier N times in fresh processes and diff every run against the first:
# any verdict flip or evidence that moved is a flaky claim to fix at its root.
set -uo pipefail
cd "$(dirname "$0")/.."
N="${1:-5}"
OUT="${2:-reports/repeatability}"
rm -rf "$OUT"; mkdir -p "$OUT"
for i in $(seq 1 "$N"); do
  HARNESS_REPORTS="$OUT/run$i" HYPOTHESIS_PROFILE=ci python -m pytest -q -p no:cacheprovider tests/claims tests/unit \
    > "$OUT/run$i.log" 2>&1
  echo "run $i: $(tail -1 "$OUT/run$i.log")"
done
status=0
for i in $(seq 2 "$N"); do
  python -m harness diff "$OUT/run1" "$OUT/run$i" > "$OUT/diff$i.txt"
  if grep -q "verdict \|evidence " "$OUT/diff$i.txt"; then status=1; cat "$OUT/diff$i.txt"; fi
done
[ "$status" -eq 0 ] && echo "all $N runs: identical verdicts and evidence"
exit "$status"
