"""Backends are a registry behind one interface: a new one runs through finetune with no edit elsewhere."""

import subprocess
from pathlib import Path

import pytest

from harness import backends
from harness.backends.hf import HfBackend

ROOT = Path(__file__).resolve().parents[2]


class RecordingBackend(HfBackend):
    """A third backend: the hf one under another name, recording which interface methods finetune called."""

    name = "fake"
    masker_name = "fake masker"

    def __init__(self):
        self.calls = []

    def prepare(self):
        self.calls.append("prepare")

    def load(self, *args):
        self.calls.append("load")
        return super().load(*args)

    def train_rows(self, rows):
        self.calls.append("train_rows")
        return super().train_rows(rows)

    def build_trainer(self, *args):
        self.calls.append("build_trainer")
        return super().build_trainer(*args)

    def export(self, *args):
        self.calls.append("export")
        return {"fake": True}


@pytest.mark.slow
def test_a_registered_backend_runs_through_finetune(tmp_path, tiny_dir, monkeypatch):
    """Two steps of 2 rows need 4 training rows, and finetune tokenizes (and TRL prepares) the whole split: with the
    12,000 rows this test took 11.4 s on 2 cores (2026-11-29), 6 of them there. It reads which interface methods ran
    and what the record says of them, so it trains on the split's first 16 rows."""
    from harness import dataset
    from harness.finetune import finetune

    full = dataset.generate

    def first_train_rows(*args, **kwargs):
        splits = full(*args, **kwargs)
        return {**splits, "train": splits["train"][:16]}

    monkeypatch.setattr(dataset, "generate", first_train_rows)
    from harness import models

    resolve = models.resolve

    def recording_resolve(name):
        fake.calls.append("resolve")
        return resolve(name)

    monkeypatch.setattr(models, "resolve", recording_resolve)
    fake = backends.register(RecordingBackend())
    try:
        assert "fake" in backends.names()
        record = finetune(model="tiny", backend="fake", out_dir=tmp_path, max_steps=2, batch_size=2, eval_limit=2,
                          evaluate_base=False)
    finally:
        backends._REGISTRY.pop("fake")
    assert record["complete"] and record["backend"] == "fake" and record["artifacts"] == {"fake": True}
    # imports before the model is resolved: the GPU tier's runs start while the model materializes (prepare's doc)
    assert fake.calls == ["prepare", "resolve", "load", "train_rows", "build_trainer", "export"]
    assert 0 <= record["model_resolve_seconds"] < 60
    assert record["mask_check"]["implementation"] == "fake masker"


def test_a_run_that_would_build_its_model_builds_it_before_the_backend_imports(tmp_path, tiny_dir, monkeypatch):
    """Unsloth's import rewrites transformers' code for the process: a run that would materialize the embedded model
    itself (a fresh cache, nobody else building) resolves it before prepare()."""
    from harness import models
    from harness.finetune import ReferenceFinetune
    from harness.recipe import HANDBOOK

    fake = backends.register(RecordingBackend())
    resolve = models.resolve
    monkeypatch.setattr(models, "resolve", lambda name: (fake.calls.append("resolve"), resolve(name))[1])
    try:
        for would_build, order in ((True, ["resolve", "prepare", "load"]), (False, ["prepare", "resolve", "load"])):
            fake.calls.clear()
            monkeypatch.setattr(models, "would_materialize_here", lambda name, answer=would_build: answer)
            run = ReferenceFinetune("tiny", "fake", HANDBOOK, tmp_path / str(would_build), "none", "handbook", False)
            run.load()
            assert fake.calls == order, would_build
    finally:
        backends._REGISTRY.pop("fake")


def test_unknown_backend_names_the_registered_ones():
    with pytest.raises(ValueError, match="hf, unsloth"):
        backends.get("jax")


def test_no_backend_branches_outside_the_backends_package():
    found = subprocess.run(["grep", "-rn", "backend ==", "harness", "tests", "--include=*.py"], cwd=ROOT,
                           capture_output=True, text=True).stdout.splitlines()
    assert [line for line in found if not line.startswith("harness/backends/") and "test_backends.py" not in line] == []


def test_hf_backend_lora_init_does_not_depend_on_what_the_process_drew_before(tiny_dir):
    """lora_A's init is seeded with the recipe's seed (as Unsloth's random_state): the tiny run's numbers were once
    different with its test file alone and inside the suite."""
    import torch

    from harness import backends
    from harness.recipe import HANDBOOK

    impl = backends.get("hf")
    expected, _ = impl.expected(HANDBOOK, on_gpu=False)

    def first_lora_a():
        model, _ = impl.load(tiny_dir, HANDBOOK, expected)
        return next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()

    torch.rand(1000)
    a = first_lora_a()
    torch.rand(12345)
    assert torch.equal(a, first_lora_a())


def test_batched_tokenizing_gives_the_ids_of_one_conversation_at_a_time(tokenizer, dataset):
    """tokenize_conversations applies the chat template to chunks of conversations; each row's ids are those of the
    conversation alone (rows of every function and split, across a chunk boundary), and every row keeps its index."""
    from harness.backends import sft
    from harness.masking import reference_masker

    conversations = [ex.messages for split in ("train", "validation", "test") for ex in dataset[split][:400]]
    rows = sft.tokenize_conversations(tokenizer, conversations, reference_masker(tokenizer), 512)
    alone = [list(tokenizer.apply_chat_template(m, return_dict=True)["input_ids"])[:512] for m in conversations]
    assert len(conversations) > sft.TOKENIZE_CHUNK and [row["input_ids"] for row in rows] == alone
