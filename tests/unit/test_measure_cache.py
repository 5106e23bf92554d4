"""The measurement cache returns a stored result only for the same content, and never trusts a tampered entry."""

import json

import pytest

from harness import measure_cache as mc


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.delenv(mc.ENV, raising=False)
    return tmp_path / "measurements"


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_same_inputs_measure_once_and_return_the_stored_form(cache):
    compute, calls = counting({"a": (1, 2), "b": 0.5})
    first = mc.cached("k", {"file": "x"}, compute)
    second = mc.cached("k", {"file": "x"}, compute)
    assert first == second == {"a": [1, 2], "b": 0.5} and len(calls) == 1


def test_changed_content_is_measured_again(cache, tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"one")
    compute, calls = counting({"v": 1})
    mc.cached("k", {"file": mc.file_digest(f)}, compute)
    f.write_bytes(b"two!")
    mc.cached("k", {"file": mc.file_digest(f)}, compute)
    assert len(calls) == 2


def test_a_tampered_entry_is_measured_again_and_said(cache, capsys):
    compute, calls = counting({"v": 1})
    mc.cached("k", {"file": "x"}, compute)
    entry_path = next((cache / "k").glob("*.json"))
    entry = json.loads(entry_path.read_text())
    entry["value"] = {"v": 999}
    entry_path.write_text(json.dumps(entry))
    assert mc.cached("k", {"file": "x"}, compute) == {"v": 1} and len(calls) == 2
    assert "does not match its value" in capsys.readouterr().err


def test_off_switch_always_measures(cache, monkeypatch):
    monkeypatch.setenv(mc.ENV, "0")
    compute, calls = counting({"v": 1})
    mc.cached("k", {"file": "x"}, compute)
    mc.cached("k", {"file": "x"}, compute)
    assert len(calls) == 2 and not cache.exists()


def test_code_digest_follows_the_measuring_function_not_its_neighbours():
    def measure_a():
        return 1

    def measure_b():
        return 2

    assert mc.code_digest(measure_a) == mc.code_digest(measure_a) != mc.code_digest(measure_b)
    assert mc.code_digest(mc) != mc.code_digest(measure_a)  # a module counts whole
