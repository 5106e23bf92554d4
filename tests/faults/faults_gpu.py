"""Planted regressions in Unsloth's own code paths, for the GPU tier (issue #15, "GPU-side faults").

Each is applied in every process that loads Unsloth (harness.train_unsloth.load_unsloth calls
harness.pytest_plugin.apply_planted_fault_in_child(gpu=True) right after `import unsloth`, before the model is
loaded): the reference fine-tune (`python -m harness finetune --backend unsloth`), the checkpointing probes
(`python -m harness.gpu_probe`), and the pytest process itself where a selected test loads Unsloth there
(tests/gpu/conftest.py's unsloth_model; none of these faults' tests does). Patch points read from unsloth 2026.10.9 / unsloth_zoo 2026.10.9 / transformers 5.17.0
(tests/faults/test_gpu_fault_points.py checks the unsloth_zoo/transformers side of each on the CPU). Each patch is
idempotent: load_unsloth can run more than once in a process.

tests/faults/test_fault_catalog.py::test_every_gpu_fault_is_caught_by_its_claim runs them on a CUDA runner, each in
its own `pytest -m gpu` beside one clean control run of the same tests; a fault counts as caught only when its claim
is red with it and not red in the control.
"""

from __future__ import annotations

from fault import Fault

TIER = "tests/gpu/test_unsloth_tier.py"
BOUNDARY = "tests/gpu/test_blind_spots_gpu.py::test_unsloth_checkpointing_at_the_recipes_max_seq_length"
# Gemma 3's turn markers in its vocabulary (<start_of_turn>, <end_of_turn>): CONTROL tokens.
TURN_MARKER_IDS = (105, 106)


def _adapter_not_in_merge(evidence: dict) -> bool:
    """MERGE-IS-TRAINED's evidence reads the adapter as missing from the merge (spec.checklist.check_merge; no longer the
    ratio of maxima, which clean runs read down to 2.28): an adapted layer whose merged weight carries less of its update
    than the band's floor (0 where it is dropped), or, in a record without the weight check, a top-1 agreement with the
    trained model under the floor (the recorded drops: 0.133 and 0.156)."""
    from spec.checklist import MERGE_TOP1_FLOOR, MERGE_WEIGHT_BAND

    top1, share = evidence.get("merged_top1_agreement"), evidence.get("weight_share_min")
    return ((isinstance(share, float) and share < MERGE_WEIGHT_BAND[0])
            or (isinstance(top1, float) and top1 < MERGE_TOP1_FLOOR))


def _merge_drops_adapter():
    """unsloth_zoo's 16-bit merge writes each weight without W += s·B·A (unsloth #869, #1929, #2142): both GGUF
    exports are then made from the base model. _merge_and_overwrite_lora looks `_merge_lora` up as a module global."""
    from unsloth_zoo import saving_utils

    if getattr(saving_utils._merge_lora, "_fault", False):
        return

    def merge_lora(W, lora_stats, name, use_dequant_base=False):
        return W  # the early return _merge_lora takes for a module without A and B: the caller writes W as it came

    merge_lora._fault = True
    saving_utils._merge_lora = merge_lora


def _layers_bypass_unsloth_checkpoint():
    """transformers binds checkpoint(use_reentrant=False) on the decoder layers (transformers #43203, fixed in
    unsloth_zoo): the non-reentrant path never applies torch's CheckpointFunction, which is where Unsloth swaps in its
    offloading UnslothCheckpointFunction; the installed global still reads unsloth_checkpoint."""
    import functools
    import inspect

    from transformers import modeling_utils

    cls = modeling_utils.PreTrainedModel
    if getattr(cls._set_gradient_checkpointing, "_fault", False):
        return
    original = cls._set_gradient_checkpointing
    # torch's own checkpoint, as transformers bound it at import (Unsloth rebinds the module globals later)
    torch_checkpoint = inspect.signature(original).parameters["gradient_checkpointing_func"].default
    nonreentrant = functools.partial(torch_checkpoint, use_reentrant=False)

    def _set_gradient_checkpointing(self, enable=True, gradient_checkpointing_func=None, every_n_layers=1):
        return original(self, enable=enable, gradient_checkpointing_func=nonreentrant, every_n_layers=every_n_layers)

    _set_gradient_checkpointing._fault = True
    cls._set_gradient_checkpointing = _set_gradient_checkpointing


def _response_marker_one_short():
    """unsloth_zoo's train_on_responses_only searches the response marker one token short (Gemma 3 marker-search
    reports: unsloth #2117, #2734). For "<start_of_turn>model\\n" its token finder returns the core [105, 4368]
    (<start_of_turn>, model) with "\\n" (107) as an optional right part (unsloth_zoo 2026.10.9); the fault drops the
    core's last token and the optional part, so the marker's "\\n" becomes a trained label in every model turn (24 CPU
    conversations: 26 of 26 model turns, wrongly_trained 0 -> 26)."""
    from unsloth_zoo import dataset_utils

    if getattr(dataset_utils._find_common_token_ids, "_fault", False):
        return
    original = dataset_utils._find_common_token_ids

    def find(component, tokenizer, force_match=False):
        must, left, right = original(component, tokenizer, force_match)
        if component.strip().endswith("model") and len(must) > 1:
            return must[:-1], left, []  # the bug: the core's last token and the optional right part dropped
        return must, left, right

    find._fault = True
    dataset_utils._find_common_token_ids = find


def retype_turn_markers(path, ids=TURN_MARKER_IDS) -> int:
    """Rewrite the GGUF at `path` in place so that `ids` are NORMAL tokens instead of CONTROL; returns how many changed."""
    import gguf

    from harness.gguf_verify import fast_reader_class

    reader = fast_reader_class()(path, "r+")  # a writable memmap (and views of it): the edits land in the file
    field = reader.fields["tokenizer.ggml.token_type"]
    changed = 0
    for i in ids:
        part = field.parts[field.data[i]]
        if int(part[0]) == int(gguf.TokenType.CONTROL):
            part[0] = int(gguf.TokenType.NORMAL)
            changed += 1
    reader.data.flush()
    return changed


def _gguf_turn_markers_normal():
    """Unsloth's GGUF export types <start_of_turn> and <end_of_turn> NORMAL instead of CONTROL (the class of llama.cpp
    converter token-type regressions): llama.cpp then splits "<start_of_turn>" into text pieces. The converter runs in a
    subprocess, so the file it wrote is edited when unsloth_zoo's convert_to_gguf returns (before any quantize pass)."""
    import sys

    from unsloth_zoo import llama_cpp

    def wrap(original):
        if getattr(original, "_fault", False):
            return original

        def convert_to_gguf(*args, **kwargs):
            out = original(*args, **kwargs)
            files = out[0] if isinstance(out, tuple) else out
            for path in [files] if isinstance(files, str) else files:
                retype_turn_markers(path)
            return out

        convert_to_gguf._fault = True
        return convert_to_gguf

    llama_cpp.convert_to_gguf = wrap(llama_cpp.convert_to_gguf)
    if "unsloth.save" in sys.modules:  # unsloth.save binds the name at its (lazy) import
        sys.modules["unsloth.save"].convert_to_gguf = wrap(sys.modules["unsloth.save"].convert_to_gguf)
    else:  # not imported yet: bind the wrapped one when it is
        import importlib.abc
        import importlib.machinery

        class _PatchOnImport(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "unsloth.save":
                    return None
                sys.meta_path.remove(self)
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                if spec is None:
                    return None
                exec_module = spec.loader.exec_module

                def exec_and_patch(module):
                    exec_module(module)
                    module.convert_to_gguf = wrap(module.convert_to_gguf)

                spec.loader.exec_module = exec_and_patch
                return spec

        sys.meta_path.insert(0, _PatchOnImport())


FAULTS = [
    Fault("gpu-merge-drops-adapter", "5", "Unsloth's 16-bit merge writes the base weights without the adapter",
          "MERGE-IS-TRAINED", (f"{TIER}::test_the_merged_checkpoint_is_the_trained_model",
                               f"{TIER}::test_the_exported_gguf_answers_like_the_trained_model"), _merge_drops_adapter,
          child=True, gpu=True, shows=lambda ev: _adapter_not_in_merge(ev)),
    Fault("gpu-layers-bypass-unsloth-checkpoint", "2",
          "the decoder layers call checkpoint(use_reentrant=False), bypassing Unsloth's offloaded checkpoint",
          "GC-FALLBACK-BOUNDARY", (BOUNDARY,), _layers_bypass_unsloth_checkpoint, child=True, gpu=True,
          shows=lambda ev: ev.get("unsloth_at_512") is True and ev.get("layers_reach_unsloth_at_512") is False),
    Fault("gpu-masker-marker-one-short", "3", "Unsloth's masker matches the response marker one token short",
          "MASK-USER-TURNS", (f"{TIER}::test_reference_finetune_end_to_end",), _response_marker_one_short,
          child=True, gpu=True,
          shows=lambda ev: (ev.get("wrongly_trained") or 0) > 0 or (ev.get("masked_positions_trained_in_batches") or 0) > 0),
    Fault("gpu-gguf-turn-markers-normal", "5", "Unsloth's GGUF export types the turn markers NORMAL, not CONTROL",
          "GGUF-Q8-EXPORT", (f"{TIER}::test_unsloth_q8_0_export_offline_is_verified",), _gguf_turn_markers_normal,
          child=True, gpu=True, shows=lambda ev: (ev.get("token_table_entries_differing") or 0) > 0),
]
