"""CATALOG.md is what spec/ holds, and no founding claim ID was renamed or dropped."""

import pytest

from spec import CLAIMS
from spec.catalog import CATALOG, FOUNDING, TIER_CHANGES, founding_ids, render


def test_checked_in_catalog_matches_the_specs():
    assert CATALOG.read_text() == render(), "spec/ changed: run `python -m harness catalog --write`"


def test_every_founding_id_is_still_here_with_its_tier():
    if not FOUNDING.is_file():
        pytest.skip(f"the founding catalog {FOUNDING} is not beside this checkout")
    founding = founding_ids()
    assert len(founding) >= 33
    for cid, (old, new, why) in TIER_CHANGES.items():
        assert founding[cid] == old and CLAIMS[cid].tier == new and why
        founding[cid] = new
    assert {cid: CLAIMS[cid].tier if cid in CLAIMS else None for cid in founding} == founding


def test_every_expectation_source_is_stored_or_derived():
    """A claim's `sources` name stored measurements that exist in the repo (a glob matches at least one file), or say
    how the value is derived."""
    from pathlib import Path

    import spec

    root = Path(__file__).resolve().parents[2]
    missing = [(c.id, s) for c in spec.CLAIMS.values() for s in c.sources
               if not s.startswith("derived: ") and not list(root.glob(s))]
    assert missing == []


def test_a_moved_bound_under_a_recorded_verdict_is_explained_as_such():
    """The GPU token-type fault (2026-11-29) printed "expected verdict 'pass', observed 'pass'" above its violated
    bound: a reader saw no failure. A moved bound now says the verdict is as recorded and the evidence left a bound."""
    from spec.core import Outcome

    moved = Outcome("GGUF-Q8-EXPORT", "unsloth", "pass", "pass", {"token_table_entries_differing": 2},
                    ["token_table_entries_differing == 0 (observed 2)"])
    assert moved.regression
    assert moved.explain().splitlines()[0] == ("GGUF-Q8-EXPORT [unsloth]: verdict 'pass' as recorded, but the evidence "
                                               "left 1 recorded bound(s)")
    flipped = Outcome("GGUF-Q8-EXPORT", "unsloth", "fail", "pass", {}, [])
    assert "expected verdict 'pass', observed 'fail'" in flipped.explain()
