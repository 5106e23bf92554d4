"""The measurement cache returns a stored result only for the same content, and never trusts a tampered entry."""

import json
from pathlib import Path

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


def _fake_tree_and_checkpoint(tmp_path):
    tree, checkpoint = tmp_path / "tree", tmp_path / "ckpt"
    (tree / "gguf-py" / "gguf").mkdir(parents=True)
    (tree / "conversion").mkdir()
    (tree / "convert_hf_to_gguf.py").write_text("# converter")
    (tree / "gguf-py" / "gguf" / "quants.py").write_text("# quants")
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    return tree, checkpoint


@pytest.fixture
def fake_convert(monkeypatch):
    from harness import llama_cpp_vendor

    calls = []

    def convert(tree, checkpoint, out_file, outtype="q8_0"):
        calls.append(out_file)
        out_file.write_bytes((checkpoint / "model.safetensors").read_bytes() + outtype.encode())
        return {"file": str(out_file), "seconds": 8.2, "converter": str(tree / "convert_hf_to_gguf.py")}

    monkeypatch.setattr(llama_cpp_vendor, "convert", convert)
    return calls


def test_the_converters_file_is_made_once_per_content(cache, tmp_path, fake_convert):
    """llama.cpp's converter (the reference the exporter is compared with) runs once for the same tree, checkpoint and
    libraries; a changed weight file or converter source is a new file, and the cache off converts every time."""
    from harness.llama_cpp_vendor import convert_once

    tree, checkpoint = _fake_tree_and_checkpoint(tmp_path)
    first = convert_once(tree, checkpoint, tmp_path / "a.gguf")
    second = convert_once(tree, checkpoint, tmp_path / "b.gguf")
    assert len(fake_convert) == 1 and (first["cached"], second["cached"]) == (False, True)
    assert first["file"] == second["file"] and Path(second["file"]).read_bytes() == b"weightsq8_0"
    assert second["seconds"] == 8.2  # the conversion's own time, not the cache hit's
    (checkpoint / "model.safetensors").write_bytes(b"trained weights")  # another checkpoint
    assert Path(convert_once(tree, checkpoint, tmp_path / "c.gguf")["file"]).read_bytes() == b"trained weightsq8_0"
    (tree / "gguf-py" / "gguf" / "quants.py").write_text("# quants, rounding changed")  # another converter
    convert_once(tree, checkpoint, tmp_path / "d.gguf")
    assert len(fake_convert) == 3


def test_the_converter_runs_every_time_with_the_cache_off(cache, tmp_path, fake_convert, monkeypatch):
    from harness.llama_cpp_vendor import convert_once

    monkeypatch.setenv(mc.ENV, "0")
    tree, checkpoint = _fake_tree_and_checkpoint(tmp_path)
    for name in ("a.gguf", "b.gguf"):
        assert convert_once(tree, checkpoint, tmp_path / name)["file"] == str(tmp_path / name)
    assert len(fake_convert) == 2


def test_a_converted_file_that_changed_is_made_again_and_is_handed_out_read_only(cache, tmp_path, fake_convert):
    import os

    from harness.llama_cpp_vendor import convert_once

    tree, checkpoint = _fake_tree_and_checkpoint(tmp_path)
    path = Path(convert_once(tree, checkpoint, tmp_path / "a.gguf")["file"])
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # root may write anyway; the mode is what we set
    assert path.stat().st_mode & 0o222 == 0
    path.chmod(0o644)
    path.write_bytes(b"cut sh")  # changed or cut short after it was made
    again = convert_once(tree, checkpoint, tmp_path / "b.gguf")
    assert len(fake_convert) == 2 and not again["cached"] and Path(again["file"]).read_bytes() == b"weightsq8_0"


def test_a_rewrite_that_keeps_size_and_mtime_is_hashed_again(tmp_path):
    """file_digest is cached per process; a same-size rewrite with its mtime put back (cp -p, os.utime) changes the
    ctime, so it is read again."""
    import os

    from harness.measure_cache import file_digest

    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 64)
    stat = path.stat()
    first = file_digest(path)
    path.write_bytes(b"b" * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_digest(path) != first
