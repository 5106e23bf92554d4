"""Claims, recorded expectations and verdicts: the vocabulary every spec module uses.

A claim's check turns measurements into evidence and a verdict. Its recorded expectation is the
verdict it should reach and bounds on its evidence. An outcome is a regression when the observed
verdict differs from the recorded one or evidence leaves a bound; a claim the handbook gets wrong
stays green as `corrected`/`refuted` while the truth holds still. Every claim records exactly one
verdict per context: an experiment whose verdict moves with seed noise is underpowered, and its
remedy is more seeds or items (spec/experiment_design.py), never a band of accepted verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

VERDICTS = ("pass", "corrected", "refuted", "unsupported", "fail", "skip")
TIERS = ("cpu", "gpu", "both")


class Context(str, Enum):
    """Where a measurement was made. A claim's context-specific bounds and expectations are keyed by these;
    an unknown context is an error, never a silently dropped bound."""

    DEFAULT = "default"
    CPU = "cpu"  # CPU tier, no model or a synthetic one
    CPU_UNSLOTH_ZOO = "cpu/unsloth_zoo"  # Unsloth's own function, run on the CPU
    GEMMA3 = "gemma3"  # the Gemma 3 tokenizer
    GEMMA3_270M = "gemma3-270m"  # the embedded 270M model (CPU or meta device)
    GPU = "gpu"  # the GPU tier (Unsloth, bitsandbytes on CUDA)
    LLAMA_CPP_CONVERTER = "llama.cpp-converter"  # llama.cpp's own convert_hf_to_gguf.py
    SYNTHETIC = "synthetic"  # generated inputs (e.g. loss curves for a detector)
    TINY = "tiny"  # the 6-layer random-weight Gemma 3
    UNSLOTH = "unsloth"  # Unsloth's own exporter


class UnknownContext(ValueError):
    """A measurement context that is not a `Context`: its bounds would be silently skipped."""


def context_of(name: str) -> Context:
    try:
        return Context(name)
    except ValueError:
        raise UnknownContext(f"unknown measurement context {name!r}; known: "
                             f"{', '.join(c.value for c in Context)} (add it to spec.core.Context)") from None


@dataclass(frozen=True)
class Bound:
    """A recorded bound on one evidence value; `op` is one of ==, <=, >=, <, >, ~ (abs tolerance), in."""

    key: str
    op: str
    value: Any
    tol: float = 0.0

    def holds(self, evidence: dict) -> bool:
        if self.key not in evidence:
            return False
        observed = evidence[self.key]
        if self.op == "==":
            return observed == self.value
        if self.op == "in":
            return observed in self.value
        if observed is None or (isinstance(observed, float) and math.isnan(observed)):
            return False
        if self.op == "~":
            return abs(observed - self.value) <= self.tol
        return {"<=": observed <= self.value, ">=": observed >= self.value,
                "<": observed < self.value, ">": observed > self.value}[self.op]

    def describe(self) -> str:
        if self.op == "~":
            return f"{self.key} = {self.value} ± {self.tol}"
        return f"{self.key} {self.op} {self.value!r}"


def eq(key: str, value: Any) -> Bound:
    return Bound(key, "==", value)


def le(key: str, value: float) -> Bound:
    return Bound(key, "<=", value)


def ge(key: str, value: float) -> Bound:
    return Bound(key, ">=", value)


def near(key: str, value: float, tol: float) -> Bound:
    return Bound(key, "~", value, tol)


Check = Callable[[dict], tuple[str, dict]]


@dataclass(frozen=True)
class Claim:
    """One handbook claim: its stable ID, where it comes from, its recorded expectation and its check."""

    id: str
    section: str
    tier: str
    quote: str
    summary: str
    expected: str
    check: Check
    bounds: tuple[Bound, ...] = ()
    # Bounds that apply only in one context (e.g. counts that hold on the full Gemma 3 270M only).
    context_bounds: dict[str, tuple[Bound, ...]] = field(default_factory=dict)
    # A different recorded verdict in one context (e.g. an empirical goal measured unmet on the GPU).
    context_expected: dict[str, str] = field(default_factory=dict)
    # Where the recorded expectation and bounds come from: stored measurements (paths under reports/examples/,
    # a glob allowed) or "derived: <how>" for values that follow from a definition. Shown in results.json.
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        assert self.tier in TIERS, self.tier
        for name in (*self.context_bounds, *self.context_expected):
            context_of(name)
        for expected in (self.expected, *self.context_expected.values()):
            # One verdict: "a|b" bands (accepting either of two verdicts) are gone, as is "fail" (never recorded).
            assert expected in VERDICTS and expected != "fail", (
                f"{self.id}: recorded verdict {expected!r} is not one of {', '.join(v for v in VERDICTS if v != 'fail')}")


@dataclass
class Outcome:
    """What one evaluation of a claim observed, and whether that is a regression."""

    claim_id: str
    context: str
    verdict: str
    expected: str
    evidence: dict
    violations: list[str]

    @property
    def verdict_as_recorded(self) -> bool:
        return self.verdict == self.expected

    @property
    def regression(self) -> bool:
        return not self.verdict_as_recorded or bool(self.violations)

    def explain(self) -> str:
        if self.verdict_as_recorded:  # "expected 'pass', observed 'pass'" above a violated bound read as no failure
            lines = [f"{self.claim_id} [{self.context}]: verdict {self.verdict!r} as recorded, but the evidence left "
                     f"{len(self.violations)} recorded bound(s)"]
        else:
            lines = [f"{self.claim_id} [{self.context}]: expected verdict {self.expected!r}, observed {self.verdict!r}"]
        lines += [f"  bound violated: {v}" for v in self.violations]
        lines += [f"  evidence {k} = {v!r}" for k, v in self.evidence.items() if not isinstance(v, (list, dict))]
        return "\n".join(lines)


def evaluate(claim: Claim, measurements: dict, context: str = "default") -> Outcome:
    """Run a claim's check on measurements and compare the result with its recorded expectation."""
    context = context_of(context).value
    verdict, evidence = claim.check(measurements)
    assert verdict in VERDICTS, verdict
    bounds = claim.bounds + claim.context_bounds.get(context, ())
    violations = [
        f"{b.describe()} (observed {evidence.get(b.key, '<missing>')!r})" for b in bounds if not b.holds(evidence)
    ]
    return Outcome(claim.id, context, verdict, claim.context_expected.get(context, claim.expected), evidence, violations)


def verdict_if(ok: bool, when_ok: str) -> str:
    """The verdict of a check whose recorded finding holds (`when_ok`) or has moved (`fail`)."""
    return when_ok if ok else "fail"
