"""A GPU leg's bundle: the leg's pins replace the control's versions; an overlay holds only what differs."""

import pytest

from harness.bundle import GPU_REQUIREMENTS, _name, leg_requirements, read_pins


def test_a_whole_leg_bundle_is_the_control_list_at_the_legs_versions(tmp_path):
    leg = tmp_path / "unsloth-2026.10.1.txt"
    leg.write_text("# a leg\nunsloth==2026.10.1\nUnsloth-Zoo==2026.10.1  # normalized names match\ntrl==1.13.0\n"
                   "transformers==5.17.0\n")
    reqs = leg_requirements(read_pins(leg), overlay=False)
    assert "unsloth==2026.10.1" in reqs and "Unsloth-Zoo==2026.10.1" in reqs and "trl==1.13.0" in reqs
    assert not any(r.startswith(("unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "trl==1.15.0")) for r in reqs)
    assert "transformers==5.17.0" in reqs  # a pin the control bundle leaves to the runner is added
    assert len(reqs) == len(GPU_REQUIREMENTS) + 1


def test_an_overlay_holds_only_what_the_leg_pins_differently_from_the_control(tmp_path):
    control = {"transformers": "transformers==5.17.0", "trl": "trl==1.15.0"}
    leg = tmp_path / "leg.txt"
    leg.write_text("unsloth==2026.10.1\nunsloth_zoo==2026.10.1\ntrl==1.13.0\ntransformers==5.17.0\n"
                   "bitsandbytes==0.50.2\n")
    assert leg_requirements(read_pins(leg), overlay=True, control_pins=control) == [
        "unsloth==2026.10.1", "unsloth_zoo==2026.10.1", "trl==1.13.0"]


def test_a_leg_file_that_is_not_exact_pins_is_refused(tmp_path):
    leg = tmp_path / "leg.txt"
    leg.write_text("unsloth>=2026.10\n")
    with pytest.raises(ValueError, match="not a pin"):
        read_pins(leg)


def test_the_repositorys_gpu_legs_overlay_what_they_change():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "constraints"
    control = read_pins(root / "control.txt")
    assert leg_requirements(read_pins(root / "unsloth-2026.10.9.txt"), True, control) == []  # the control's own
    assert {_name(r) for r in leg_requirements(read_pins(root / "unsloth-2026.10.1.txt"), True, control)} == {
        "unsloth", "unsloth-zoo", "trl"}
