"""A version leg whose pins silently did not hold is a failed leg."""

import importlib.metadata
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pins(leg: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints" / f"{leg}.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.strip()] = version.strip()
    return out


@pytest.mark.parametrize("leg", sorted(p.stem for p in (ROOT / "constraints").glob("*.txt")))
def test_constraint_files_pin_the_packages_the_legs_are_about(leg):
    """Every leg pins trl and transformers (the upgrade the legs exist to guard)."""
    assert {"trl", "transformers"} <= set(pins(leg))


def test_installed_versions_are_the_legs_pins():
    """Inside a leg (HARNESS_LEG set), every pinned package has exactly its pinned version installed."""
    leg = os.environ.get("HARNESS_LEG")
    if not leg:
        pytest.skip("not running inside a version leg (HARNESS_LEG unset)")
    wrong = {name: (want, importlib.metadata.version(name)) for name, want in pins(leg).items()
             if importlib.metadata.version(name) != want}
    assert wrong == {}
