"""Which held-out values the model has to re-spell to copy them, and how often it copies each kind right.

Gemma 3's tokenizer cuts a word differently after a space than after a quote. In a request a city follows a space
("في الجزائر": one piece "▁الجزائر"); in the answer it follows a quote ('"city": "الجزائر"': "ال" "جز" "ائر").
Copying such a value is not copying pieces: the model must spell out a piece it read. Measured on held-out requests
(reports/examples/h200x2-2026-11-28-bigpools, the handbook's recipe under Unsloth): values with the same pieces were
copied right 942/1020 = 0.924 (600 steps), 984/1020 = 0.965 (1,200 steps) and 972/1022 = 0.951 (H100, smaller pools);
re-spelled ones 134/283 = 0.473, 148/283 = 0.523 and 154/287 = 0.537. Cities are hard even with the same pieces
(0.60 at 600 steps, 0.89 at 1,200), and a held-out city is all right or all wrong (الخرطوم 0/12, عجمان 13/13). This
is what limits held-out exact match.

`split(rows, tokenizer)` classifies every string value of the expected call that occurs verbatim in the request
(numbers, times and mapped words like "بكرة" → "tomorrow" are not copies and are left out) and counts it right when
the output's value is exactly the expected one. `python -m harness.value_tokens OUTPUTS.jsonl` prints the table for
stored outputs (harness.evaluate writes them beside each run record).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.scoring import parse_call

SAME, RESPELLED = "same", "respelled"


def _pieces(tokenizer, text: str, start: int, end: int) -> tuple[str, ...]:
    """The pieces that cover text[start:end], word markers and spaces stripped; a piece that reaches past the value
    (merged with a neighbouring letter) keeps its other letters, so it differs from the answer's pieces."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = enc.tokens() if hasattr(enc, "tokens") else tokenizer.convert_ids_to_tokens(enc["input_ids"])
    covering = [tok for tok, (s, e) in zip(tokens, enc["offset_mapping"]) if s < end and e > start]
    return tuple(tok.replace("▁", "").strip() for tok in covering)


def respelled(tokenizer, request: str, answer: str, value: str) -> bool | None:
    """True if `value`'s pieces in `answer` (where it is a JSON string) differ from its pieces in `request`; None
    where the value is not in both verbatim."""
    at_request = request.find(value)
    quoted = json.dumps(value, ensure_ascii=False)
    at_answer = answer.find(quoted)
    if at_request < 0 or at_answer < 0 or not value.strip():
        return None
    in_request = _pieces(tokenizer, request, at_request, at_request + len(value))
    in_answer = _pieces(tokenizer, answer, at_answer + 1, at_answer + 1 + len(value))
    return in_request != in_answer


def split(rows, tokenizer) -> dict:
    """rows: dicts with request, expected (the answer JSON), output. Per slot (function.key) and in total: copied
    values with the same pieces / re-spelled, how many and how many right."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor wraps the text tokenizer
    per_slot: dict[str, dict] = {}
    for row in rows:
        want, got = parse_call(row["expected"] or "") or {}, parse_call(row["output"] or "") or {}
        function = want.get("action", row.get("function"))
        for key, value in want.items():
            if key == "action" or not isinstance(value, str):
                continue
            kind = respelled(tokenizer, row["request"], row["expected"], value)
            if kind is None:
                continue
            cell = per_slot.setdefault(f"{function}.{key}", {SAME: [0, 0], RESPELLED: [0, 0]})[RESPELLED if kind else SAME]
            cell[0] += 1
            cell[1] += got.get(key) == value

    def rate(n_right):
        n, right = n_right
        return {"n": n, "right": right, "accuracy": right / n if n else None}

    total = {SAME: [0, 0], RESPELLED: [0, 0]}
    for cells in per_slot.values():
        for kind in total:
            total[kind] = [a + b for a, b in zip(total[kind], cells[kind])]
    return {"method": "pieces of the value in the request vs in the answer JSON (harness.value_tokens)",
            "total": {kind: rate(v) for kind, v in total.items()},
            "per_slot": {slot: {kind: rate(v) for kind, v in cells.items()} for slot, cells in sorted(per_slot.items())}}


def markdown(result: dict) -> str:
    def cell(c):
        return f"{c['right']}/{c['n']} = {c['accuracy']:.3f}" if c["n"] else "–"

    lines = ["| slot | same pieces: right | re-spelled: right |", "| --- | ---: | ---: |"]
    for slot, cells in result["per_slot"].items():
        lines.append(f"| {slot} | {cell(cells[SAME])} | {cell(cells[RESPELLED])} |")
    lines.append(f"| **all copied values** | {cell(result['total'][SAME])} | {cell(result['total'][RESPELLED])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.value_tokens", description=__doc__.split("\n\n")[0])
    p.add_argument("outputs", nargs="+", type=Path, help="stored outputs (outputs-test.jsonl beside a run record)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = p.parse_args(argv)
    from harness.models import tokenizer_dir
    from harness.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir()))
    for path in args.outputs:
        if not path.is_file():
            print(f"error: {path}: no such file (stored outputs are outputs-<split>.jsonl beside a run.json)", file=sys.stderr)
            return 2
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        result = split(rows, tokenizer)
        print(json.dumps(result, ensure_ascii=False, indent=1) if args.json else f"{path}\n\n{markdown(result)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
