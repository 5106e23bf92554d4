"""The cache: atomic builds, one build under concurrency, recovery from a killed build, clear errors."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.cache import build_once


def _complete(p):
    return (p / "done").exists()


def _slow_build(tmp):
    (tmp / "count").write_text(str(os.getpid()))
    time.sleep(0.5)
    (tmp / "done").write_text("ok")


def _build_in_process(target, log):
    build_once(target, lambda tmp: (_slow_build(tmp), open(log, "a").write("built\n")), _complete)


def test_two_processes_build_once(tmp_path):
    """Two processes asking for the same entry at once: one builds, both get the complete entry."""
    target, log = tmp_path / "entry", tmp_path / "log"
    procs = [multiprocessing.Process(target=_build_in_process, args=(target, log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert log.read_text() == "built\n"
    assert (target / "done").read_text() == "ok"


def test_would_build_here_says_whether_this_process_would_build(tmp_path):
    """A run that imports Unsloth before resolving its model asks first (harness.models.would_materialize_here): not where
    the entry is complete, nor while another process builds it (build_once would wait); only where it would build."""
    from harness.cache import would_build_here

    target = tmp_path / "entry"
    assert would_build_here(target, _complete)  # missing, nobody building
    code = (f"import time, pathlib; from harness.cache import build_once\n"
            f"build_once(pathlib.Path({str(target)!r}), lambda t: time.sleep(60), lambda p: (p / 'done').exists())")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 20
        while not list(tmp_path.glob("entry.partial-*")) and time.time() < deadline:
            time.sleep(0.1)
        assert not would_build_here(target, _complete)  # another process holds the lock: it builds, this one would wait
    finally:
        proc.kill()
        proc.wait()
    assert would_build_here(target, _complete)  # the builder died: this process would build
    build_once(target, lambda tmp: (tmp / "done").write_text("ok"), _complete)
    assert not would_build_here(target, _complete)  # complete


def test_killed_build_leaves_no_entry_and_the_next_build_succeeds(tmp_path):
    """A builder killed mid-way leaves only a partial folder; the next call cleans it and builds."""
    target = tmp_path / "entry"
    code = (f"import time, pathlib; from harness.cache import build_once\n"
            f"build_once(pathlib.Path({str(target)!r}), lambda t: time.sleep(60), lambda p: (p / 'done').exists())")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 20
    while not list(tmp_path.glob("entry.partial-*")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists() and list(tmp_path.glob("entry.partial-*"))
    build_once(target, lambda tmp: (tmp / "done").write_text("ok"), _complete)
    assert (target / "done").exists() and not list(tmp_path.glob("entry.partial-*"))


def test_unknown_model_offline_names_the_embedded_default(monkeypatch, tmp_path):
    """An unknown hub id with HF_HUB_OFFLINE=1 fails with a message that names gemma3-270m."""
    from harness.models import ModelSourceError, resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelSourceError, match="gemma3-270m"):
        resolve("nobody/no-such-model")


def test_a_folder_without_config_is_refused(tmp_path):
    """A local folder that is not a checkpoint gets a clear error."""
    from harness.models import ModelSourceError, resolve

    with pytest.raises(ModelSourceError, match="config.json"):
        resolve(str(tmp_path))


def test_materialized_checkpoint_has_manifest_and_loads_as_a_normal_checkpoint(gemma_dir):
    """The embedded model is a plain HF checkpoint: config, bf16 safetensors, tokenizer, chat template, manifest."""
    manifest = json.loads((gemma_dir / "MATERIALIZED.json").read_text())
    assert manifest["gguf_sha256"].startswith("a5fd3b62")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer.model", "chat_template.jinja"):
        assert name in manifest["files"]
    config = json.loads((gemma_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 18


def _small_vocab_gguf(path):
    """A GGUF holding only a 4-token vocabulary (the real one takes ~20 s to read)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_token_list(["<pad>", "<eos>", "<bos>", "<unk>"])
    writer.add_token_scores([0.0, 0.0, 0.0, 0.0])
    writer.add_token_types([3, 3, 3, 2])
    for name, value in (("bos", 2), ("eos", 1), ("unknown", 3), ("padding", 0)):
        writer.add_uint32(f"tokenizer.ggml.{name}_token_id", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_vocabulary_cache_is_json_checked_and_never_executed(tmp_path, capsys):
    """The GGUF vocabulary cache: JSON with the source GGUF's and its own sha256; a tampered entry is read again,
    and an entry read from another GGUF is not used."""
    import json

    from harness.gemma_vocab import read_gguf_vocab

    source, cache = _small_vocab_gguf(tmp_path / "v.gguf"), tmp_path / "vocab.json"
    first = read_gguf_vocab(source, cache_file=cache)
    assert (first.tokens, first.bos_id, first.unk_id) == (["<pad>", "<eos>", "<bos>", "<unk>"], 2, 3)
    assert read_gguf_vocab(source, cache_file=cache) == first and "sha256" in json.loads(cache.read_text())
    entry = json.loads(cache.read_text())
    entry["vocab"]["tokens"][2] = "<evil>"
    cache.write_text(json.dumps(entry))
    assert read_gguf_vocab(source, cache_file=cache) == first
    assert "its sha256 does not match" in capsys.readouterr().err
    entry = json.loads(cache.read_text())
    entry["gguf_sha256"] = "0" * 64
    cache.write_text(json.dumps(entry))
    assert read_gguf_vocab(source, cache_file=cache) == first
    assert "read from another GGUF" in capsys.readouterr().err
