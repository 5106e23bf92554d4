"""The claim catalog, generated from the specs: `python -m harness catalog` prints it, `--write` updates CATALOG.md.

CATALOG.md in the repository root is the public list of claim IDs (a contract: never renamed, only added);
a unit test keeps it equal to what spec/ holds, and checks that every ID of the founding catalog
(../shared/claims.md, while that file exists) is still here with the same tier, or with a tier change listed in
TIER_CHANGES with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

CATALOG = Path(__file__).resolve().parents[1] / "CATALOG.md"
FOUNDING = Path(__file__).resolve().parents[2] / "shared" / "claims.md"
HEADER = """# The claim catalog (generated from spec/ by `python -m harness catalog --write`; do not edit by hand)

Claim IDs are a public contract: reports, results.json, JUnit properties and `harness diff` use them.
Never rename one; add new IDs. `expected` is the recorded verdict (per measurement context where it
differs); `bounds` are the recorded bounds on the evidence (context-specific ones after `[context]`).
"""


# A claim's tier moves only with a reason, kept here and printed in CATALOG.md: {ID: (founding tier, tier, why)}.
TIER_CHANGES = {
    "LR-COSINE": ("cpu", "both", "also certified on the lr every step of the Unsloth reference run applied (its run record)"),
    "CHECK-OUTPUT": ("both", "gpu", "a model without training (the CPU tier's random tiny) scores ~0 and can judge nothing"),
}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render() -> str:
    import spec

    lines = [HEADER]
    by_section: dict[str, list] = {}
    for claim in spec.CLAIMS.values():
        by_section.setdefault(claim.section, []).append(claim)
    for section, claims in by_section.items():
        lines += [f"\n## {section}\n", "| ID | tier | handbook | what the spec shows | expected | bounds |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in claims:
            expected = " ".join([c.expected] + [f"[{k}] {v}" for k, v in c.context_expected.items()])
            bounds = "; ".join([b.describe() for b in c.bounds] +
                               [f"[{k}] {b.describe()}" for k, bs in c.context_bounds.items() for b in bs])
            lines.append(f"| {c.id} | {c.tier} | {_cell(c.quote)} | {_cell(c.summary)} | {_cell(expected)} | "
                         f"{_cell(bounds) or '—'} |")
    if TIER_CHANGES:
        lines += ["\n## Tier changes since the founding catalog\n", "| ID | founding tier | tier | why |", "| --- | --- | --- | --- |"]
        lines += [f"| {cid} | {old} | {new} | {_cell(why)} |" for cid, (old, new, why) in TIER_CHANGES.items()]
    return "\n".join(lines) + "\n"


def founding_ids(path: Path = FOUNDING) -> dict[str, str]:
    """{ID: tier} from the founding catalog's tables."""
    return dict(re.findall(r"^\| ([A-Z0-9-]+) \| (cpu|gpu|both) \|", path.read_text(), flags=re.M))


def main(argv: list[str] | None = None) -> int:
    text = render()
    if argv and "--write" in argv:
        CATALOG.write_text(text)
        print(f"wrote {CATALOG}")
    else:
        print(text, end="")
    return 0
