"""The GPU tier's planted faults (tests/faults/faults_gpu.py) still reach the code they model: their unsloth_zoo and
transformers side, checked on the CPU with the installed versions (what Unsloth itself calls is GPU-only knowledge): an upgrade that moves a patch point would otherwise leave a GPU fault run
planting nothing, and its claim 'not caught' for the wrong reason (or caught by a broken run). Each fault is applied
under monkeypatch, which restores what it replaced."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

import spec
from spec.core import evaluate

FAULTS_DIR = Path(__file__).resolve().parent
# Part of the fault catalog's target (`pytest tests/faults --faults`, which CI runs): these check the suite's own
# fault machinery against the installed libraries, not a claim of the user's pipeline, so certify leaves them out
# (as it leaves out the catalog itself).
pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def gpu_faults():
    sys.path.insert(0, str(FAULTS_DIR))
    module_spec = importlib.util.spec_from_file_location("handbook_faults_gpu_points", FAULTS_DIR / "faults_gpu.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """unsloth_zoo importable on the CPU, with the modules the faults patch imported from a scratch folder: importing
    saving_utils compiles Unsloth's MoE helpers into ./unsloth_compiled_cache, which must not land in the checkout."""
    import os

    from harness.doctor import UNSLOTH_ZOO_ENV

    for key, value in UNSLOTH_ZOO_ENV.items():
        os.environ.setdefault(key, value)
    scratch, here = tmp_path_factory.mktemp("unsloth-zoo-cwd"), os.getcwd()
    os.chdir(scratch)
    try:
        import unsloth_zoo
        from unsloth_zoo import dataset_utils, llama_cpp, saving_utils  # noqa: F401
    except Exception as exc:  # an environment problem, not a fault that stopped reaching its code
        from harness.doctor import PREFIX

        # "environment problem: unsloth_zoo: ..." — inside a version leg that skip is a failure (harness.doctor.leg_breakage)
        pytest.skip(f"{PREFIX}: unsloth_zoo: it does not import here ({type(exc).__name__}: {exc}); "
                    "pip install unsloth_zoo with the pinned trl and transformers")
    finally:
        os.chdir(here)
    return unsloth_zoo


def test_the_merge_fault_reaches_unsloths_merge(gpu_faults, zoo, monkeypatch):
    """_merge_and_overwrite_lora looks _merge_lora up as a module global (so the fault's replacement is what it calls),
    _merge_lora adds s·B·A, and the fault returns W unchanged."""
    import torch
    from types import SimpleNamespace

    from unsloth_zoo import saving_utils

    import inspect

    merge_fn = inspect.unwrap(saving_utils._merge_and_overwrite_lora)  # it is wrapped by torch.no_grad()
    assert "_merge_lora" in merge_fn.__code__.co_names
    monkeypatch.setattr(saving_utils, "_merge_lora", saving_utils._merge_lora)
    W = torch.zeros(4, 3)
    stats = SimpleNamespace(lora_A=torch.ones(2, 3), lora_B=torch.ones(4, 2), alpha=0.5, module=None)
    merged = saving_utils._merge_lora(W.clone(), stats, "q_proj")
    assert torch.allclose(merged.float(), torch.full((4, 3), 1.0))  # 0.5 · (B·A = 2)
    gpu_faults._merge_drops_adapter()
    assert torch.equal(saving_utils._merge_lora(W.clone(), stats, "q_proj"), W)


def test_the_checkpoint_fault_makes_the_layers_bypass_unsloth(gpu_faults, tiny_dir, monkeypatch):
    """What unsloth_zoo's prepare_model_for_training calls (model._set_gradient_checkpointing(), no function): the
    layers bind torch's reentrant checkpoint, which reaches Unsloth's CheckpointFunction; with the fault,
    checkpoint(use_reentrant=False), which does not."""
    from transformers import AutoModelForCausalLM, modeling_utils

    from harness.gpu_probe import layer_checkpoint_functions
    from spec.blind_spots import layers_reach_unsloth

    monkeypatch.setattr(modeling_utils.PreTrainedModel, "_set_gradient_checkpointing",
                        modeling_utils.PreTrainedModel._set_gradient_checkpointing)

    def layers():
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        model._set_gradient_checkpointing()
        return layer_checkpoint_functions(model)["layer_checkpoint_functions"]

    clean = layers()
    assert layers_reach_unsloth(clean, "UnslothCheckpointFunction") is True, clean
    gpu_faults._layers_bypass_unsloth_checkpoint()
    bypass = layers()
    assert set(bypass) == {"torch.utils.checkpoint.checkpoint(use_reentrant=False)"}, bypass
    assert layers_reach_unsloth(bypass, "UnslothCheckpointFunction") is False


def test_the_masker_fault_leaves_a_marker_token_trained(gpu_faults, zoo, tokenizer, dataset, monkeypatch):
    """unsloth_zoo's train_on_responses_only with the response marker matched one token short: MASK-USER-TURNS red."""
    from unsloth_zoo import dataset_utils

    from harness.masking import unsloth_masker, user_turn_facts

    conversations = [e.messages for e in dataset["train"][:24]]  # the claim reads >= 20

    def facts():
        fn = unsloth_masker(tokenizer)
        rows = []
        for messages in conversations:
            ids = list(tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"])
            rows.append((ids, fn(ids)))
        return user_turn_facts(tokenizer, conversations, rows, "unsloth_zoo")

    monkeypatch.setattr(dataset_utils, "_find_common_token_ids", dataset_utils._find_common_token_ids)
    assert not evaluate(spec.CLAIMS["MASK-USER-TURNS"], facts(), "cpu/unsloth_zoo").regression
    gpu_faults._response_marker_one_short()
    planted = evaluate(spec.CLAIMS["MASK-USER-TURNS"], facts(), "cpu/unsloth_zoo")
    assert planted.regression and planted.evidence["wrongly_trained"] > 0


def test_the_token_type_fault_retypes_the_turn_markers(gpu_faults, zoo, tiny_gguf_converter, tmp_path):
    """The GGUF llama.cpp's converter writes (what Unsloth's export runs) retyped in place: the two turn markers
    CONTROL -> NORMAL, which the two-exporter comparison counts (GGUF-Q8-EXPORT's token_table_entries_differing)."""
    import gguf
    from unsloth_zoo import llama_cpp

    from harness.gguf_compare import metadata_diff
    from harness.gguf_verify import read

    assert callable(llama_cpp.convert_to_gguf)  # what the fault wraps
    copy = tmp_path / "retyped.gguf"
    shutil.copyfile(tiny_gguf_converter, copy)
    assert gpu_faults.retype_turn_markers(copy) == 2
    reader, original = read(copy), read(tiny_gguf_converter)
    field = reader.fields["tokenizer.ggml.token_type"]
    assert [int(field.parts[field.data[i]][0]) for i in gpu_faults.TURN_MARKER_IDS] == [int(gguf.TokenType.NORMAL)] * 2
    diff = metadata_diff(original, reader)
    assert list(diff["array_entries_differ"]) == ["tokenizer.ggml.token_type"], diff
    assert diff["array_entries_differ"]["tokenizer.ggml.token_type"]["entries_differing"] == 2, diff
    assert not diff["values_differ"] and not diff["only_a"] and not diff["only_b"], diff


def test_the_token_type_fault_wraps_unsloths_converter_call(gpu_faults, zoo, tiny_gguf_converter, tmp_path, monkeypatch):
    """The wrapper around unsloth_zoo's convert_to_gguf retypes each file the converter reports ((files, is_vlm) in
    2026.10.9) and returns its result unchanged; applied twice, it wraps once."""
    from unsloth_zoo import llama_cpp

    from harness.gguf_verify import read

    copy = tmp_path / "converted.gguf"
    shutil.copyfile(tiny_gguf_converter, copy)
    monkeypatch.setattr(llama_cpp, "convert_to_gguf", lambda *a, **k: ([str(copy)], False))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # the import hook it adds for unsloth.save goes with it
    calls, retype = [], gpu_faults.retype_turn_markers
    monkeypatch.setattr(gpu_faults, "retype_turn_markers", lambda path: calls.append(path) or retype(path))
    gpu_faults._gguf_turn_markers_normal()
    gpu_faults._gguf_turn_markers_normal()
    assert llama_cpp.convert_to_gguf("model", "q8_0") == ([str(copy)], False)
    assert calls == [str(copy)]  # wrapped once
    field = read(copy).fields["tokenizer.ggml.token_type"]
    assert [int(field.parts[field.data[i]][0]) for i in gpu_faults.TURN_MARKER_IDS] == [1, 1]  # NORMAL
