"""The release-matrix workflow parses, and every leg it runs is a tox env with its pins: a leg renamed or dropped in
tox.ini must not leave the workflow running nothing (or a leg the matrix then shows as never installed)."""

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release-matrix.yml"


def tox_envs() -> set[str]:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    listed = re.split(r"[\s,]+", ini.get("tox", "envlist").strip())
    return set(listed) | {s.split(":", 1)[1] for s in ini.sections() if s.startswith("testenv:")}


@pytest.fixture(scope="module")
def workflow() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in this environment")
    return yaml.safe_load(WORKFLOW.read_text())


def runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_every_leg_is_a_tox_env_with_its_pins(workflow):
    jobs = workflow["jobs"]
    envs = tox_envs()
    for name in ("cpu-leg", "gpu-leg"):
        legs = jobs[name]["strategy"]["matrix"]["leg"]
        assert legs and set(legs) <= envs, f"{name}: {sorted(set(legs) - envs)} not in tox.ini"
        assert all((ROOT / "constraints" / f"{leg}.txt").is_file() for leg in legs)  # test_version_leg reads them
        # every tox invocation runs the matrix's leg (or a literal env that exists)
        targets = [a or b for a, b in re.findall(r'tox -e (?:"([^"]+)"|(\S+))', runs(jobs[name]))]
        assert targets and all(t == "${{ matrix.leg }}" or t in envs for t in targets), targets
        assert "python -m harness.matrix record-leg" in runs(jobs[name]).replace("python3", "python")
    assert "control" in jobs["cpu-leg"]["strategy"]["matrix"]["leg"]
    assert {"self-hosted", "gpu"} <= set(jobs["gpu-leg"]["runs-on"]) and "-m gpu" in runs(jobs["gpu-leg"])


def test_the_page_is_built_from_every_leg(workflow):
    job = workflow["jobs"]["matrix-page"]
    assert set(job["needs"]) == {"cpu-leg", "gpu-leg"} and job["if"] == "always()"  # also after a failed leg
    assert "python -m harness matrix legs/*" in runs(job)
    uploads = [s["with"]["path"] for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads == ["reports/matrix"]
    # each leg's artifact is its report folder, kept whether the leg passed, failed or never installed
    for name in ("cpu-leg", "gpu-leg"):
        upload = next(s for s in workflow["jobs"][name]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
        assert upload["if"] == "always()" and upload["with"]["path"] == "reports/${{ matrix.leg }}"
