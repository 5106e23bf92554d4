"""Unsloth's GGUF export writes its converter output into the run's own folder, not the shared working directory.

unsloth/save.py (2026.10.9) converts to `<model>.Q8_0.gguf` relative to the working directory and then moves the file
into `<target>_gguf/`. On the GPU runner (2026-11-28) four fine-tunes of the GPU fault catalog exported at once from one
checkout: one run moved another run's file (its GGUF was another model), three failed ("Conversion failed ... check
disk space", FileNotFoundError). A fake model that converts the way Unsloth does shows where the file goes."""

import os
import shutil
from pathlib import Path


class UnslothLikeModel:
    """save_pretrained_gguf as Unsloth does it: a relative file in the working directory, then moved."""

    def __init__(self):
        self.cwd_at_export = None

    def save_pretrained_gguf(self, target, tokenizer, quantization_method):
        self.cwd_at_export = os.getcwd()
        Path(target).mkdir(parents=True, exist_ok=True)
        Path("gemma3-270m.Q8_0.gguf").write_bytes(b"GGUF")  # relative: the working directory
        Path(f"{target}_gguf").mkdir(exist_ok=True)
        shutil.move("gemma3-270m.Q8_0.gguf", Path(f"{target}_gguf") / "gemma3-270m.Q8_0.gguf")


def test_the_converter_writes_in_the_runs_folder(tmp_path, monkeypatch):
    from harness import gguf_export, llama_cpp_vendor
    from harness import train_unsloth

    tree = tmp_path / "llama.cpp"
    (tree / llama_cpp_vendor.QUANTIZER).parent.mkdir(parents=True)
    (tree / llama_cpp_vendor.QUANTIZER).write_text("")
    monkeypatch.setattr(llama_cpp_vendor, "find_tree", lambda: tree)
    monkeypatch.setattr(gguf_export, "export_q8_0", lambda merged, out: out)
    shared, run = tmp_path / "checkout", tmp_path / "run"
    shared.mkdir(), run.mkdir()
    monkeypatch.chdir(shared)
    model = UnslothLikeModel()
    artifacts = train_unsloth.export_unsloth_gguf(model, None, Path("../run"), tmp_path / "source")
    assert model.cwd_at_export == str(run.resolve())  # not the checkout every concurrent run shares
    assert os.getcwd() == str(shared)  # restored
    assert artifacts["gguf_unsloth"] == str(run.resolve() / "unsloth_export_gguf" / "gemma3-270m.Q8_0.gguf")
    assert list(shared.iterdir()) == []


def test_a_missing_converter_is_an_environment_problem_for_the_gguf_tests(tmp_path):
    """The GPU tests that read Unsloth's GGUF (GGUF-Q8-EXPORT and its two siblings, GGUF-HELDOUT) skip with the fix when
    the run recorded that it found no vendored llama.cpp tree; any other missing export fails, whatever this machine
    has now (a reused run is judged by its own cause)."""
    import pytest

    from harness import doctor
    from harness.llama_cpp_vendor import NO_TREE
    from harness.record_facts import unsloth_gguf

    written = tmp_path / "m.Q8_0.gguf"
    assert unsloth_gguf({"artifacts": {"gguf_unsloth": str(written)}}) == written
    with pytest.raises(doctor.EnvironmentProblem, match="environment problem: llama.cpp converter.*fix: python -m harness"):
        unsloth_gguf({"artifacts": {"gguf_unsloth_error": NO_TREE}})
    with pytest.raises(AssertionError, match="Conversion failed"):
        unsloth_gguf({"artifacts": {"gguf_unsloth_error": "RuntimeError: Conversion failed"}})
    with pytest.raises(AssertionError, match="None"):  # no GGUF and no recorded cause: the pipeline's
        unsloth_gguf({"artifacts": {}})
