"""CATALOG.md is what spec/ holds, and no founding claim ID was renamed or dropped."""

import pytest

from spec import CLAIMS
from spec.catalog import CATALOG, FOUNDING, founding_ids, render


def test_checked_in_catalog_matches_the_specs():
    assert CATALOG.read_text() == render(), "spec/ changed: run `python -m harness catalog --write`"


def test_every_founding_id_is_still_here_with_its_tier():
    if not FOUNDING.is_file():
        pytest.skip(f"the founding catalog {FOUNDING} is not beside this checkout")
    founding = founding_ids()
    assert len(founding) >= 33
    assert {cid: CLAIMS[cid].tier if cid in CLAIMS else None for cid in founding} == founding
