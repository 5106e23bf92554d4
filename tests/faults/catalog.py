"""Planted regressions: each a small runtime patch of a library's behaviour, modelling a plausible upgrade bug.

A fault is applied inside a subprocess run of the suite (harness.pytest_plugin reads HARNESS_FAULT);
the project's source is never edited. Each names the claim that must turn red and the tests to run.
The faults of this file came first; `faults_*.py` beside it add more, one file per area (each defines
`FAULTS`, a list of `Fault`), collected into `FAULTS` at the end of this file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from fault import Fault


def _lora_scaling_is_alpha():
    from peft.tuners.lora import layer

    original = layer.LoraLayer.update_layer

    def update_layer(self, adapter_name, *args, **kwargs):
        original(self, adapter_name, *args, **kwargs)
        self.scaling[adapter_name] = self.lora_alpha[adapter_name]  # bug: α instead of α/r

    layer.LoraLayer.update_layer = update_layer


def _rank_capped():
    import peft

    original = peft.LoraConfig.__post_init__

    def post_init(self):
        self.r = min(self.r, 16)
        original(self)

    peft.LoraConfig.__post_init__ = post_init


def _mlp_target_dropped():
    import peft

    original = peft.LoraConfig.__post_init__

    def post_init(self):
        original(self)
        if isinstance(self.target_modules, (set, list)):
            self.target_modules = set(self.target_modules) - {"down_proj"}

    peft.LoraConfig.__post_init__ = post_init


def _b_not_zero():
    import torch
    from peft.tuners.lora import layer

    original = layer.LoraLayer.reset_lora_parameters

    def reset(self, adapter_name, init_lora_weights):
        original(self, adapter_name, init_lora_weights)
        if adapter_name in self.lora_B:
            with torch.no_grad():
                self.lora_B[adapter_name].weight.add_(1e-3)

    layer.LoraLayer.reset_lora_parameters = reset


def _nf4_codebook_shifted():
    import bitsandbytes.functional as F
    import torch

    original = F.get_4bit_type

    def shifted(typename, device=None, blocksize=64):
        code = original(typename, device=device, blocksize=blocksize)
        if typename == "nf4":
            code = torch.cat([code[1:], code[-1:]])  # every code moved up by one
        return code

    F.get_4bit_type = shifted
    from bitsandbytes.backends.default import ops

    ops._get_4bit_quantize_bounds.cache_clear()
    ops._get_4bit_code = lambda quant_type, device: shifted(quant_type, device)


def _double_quant_off():
    import transformers

    original = transformers.BitsAndBytesConfig.post_init

    def post_init(self):
        self.bnb_4bit_use_double_quant = False
        original(self)

    transformers.BitsAndBytesConfig.post_init = post_init


def _marker_merges():
    from transformers import tokenization_utils_base as tub

    original = tub.PreTrainedTokenizerBase.encode

    def encode(self, text, *args, **kwargs):
        ids = original(self, text, *args, **kwargs)
        # bug: the turn-marker newline now merges into the following piece ("\n" -> "\n\n", id 108)
        return [108 if (i > 1 and t == 107 and ids[i - 2] == 105) else t for i, t in enumerate(ids)]

    tub.PreTrainedTokenizerBase.encode = encode


def _wrap_unsloth_masker(mutate):
    from harness.masking import unsloth_masker  # noqa: F401  (sets the env that lets unsloth_zoo import on CPU)
    import os

    for key in ("UNSLOTH_ZOO_DISABLE_GPU_INIT", "UNSLOTH_IS_PRESENT", "UNSLOTH_ALLOW_CPU"):
        os.environ.setdefault(key, "1")
    from unsloth_zoo import dataset_utils

    original = dataset_utils.train_on_responses_only

    def patched(*args, **kwargs):
        fn = original(*args, **kwargs)
        if not kwargs.get("return_function"):
            return fn

        def masked(examples):
            out = fn(examples)
            out["labels"] = [mutate(ids, labels) for ids, labels in zip(examples["input_ids"], out["labels"])]
            return out

        return masked

    dataset_utils.train_on_responses_only = patched


def _leak_last_user_token():
    def mutate(ids, labels):
        labels = list(labels)
        for i in range(3, len(ids)):
            if ids[i - 3:i] == [105, 4368, 107] and i - 6 >= 0:
                labels[i - 6] = ids[i - 6]  # the last token of the user turn now trains
        return labels

    _wrap_unsloth_masker(mutate)


def _end_of_turn_masked():
    _wrap_unsloth_masker(lambda ids, labels: [-100 if t == 106 else l for t, l in zip(ids, labels)])


def _warmup_off_by_one():
    import transformers.optimization as opt

    original = opt._get_cosine_schedule_with_warmup_lr_lambda

    def shifted(current_step, **kwargs):
        return original(current_step + 1, **kwargs)

    opt._get_cosine_schedule_with_warmup_lr_lambda = shifted


def _cosine_is_linear():
    import transformers.optimization as opt
    from transformers.trainer_utils import SchedulerType

    opt.TYPE_TO_SCHEDULER_FUNCTION[SchedulerType.COSINE] = opt.get_linear_schedule_with_warmup


def _q8_scale_fp32():
    import numpy as np
    from gguf import quants

    original = quants.quantize

    def quantize(data, qtype):
        out = original(data, qtype)
        if qtype.name == "Q8_0":
            blocks = out.reshape(-1, 34)
            scale = blocks[:, :2].copy().view(np.float16).astype(np.float32).view(np.uint8)
            out = np.concatenate([scale, blocks[:, 2:]], axis=1).reshape(*out.shape[:-1], -1)  # 36-byte blocks
        return out

    quants.quantize = quantize


def _norm_without_shift():
    from harness import gguf_export

    gguf_export.is_norm = lambda name: False  # norms go through the generic path, unshifted


def _gguf_without_tokenizer():
    import gguf

    gguf.GGUFWriter.add_token_list = lambda self, tokens: None


def _loss_counts_masked_positions():
    import torch

    original = torch.nn.functional.cross_entropy

    def cross_entropy(input, target, *args, **kwargs):
        kwargs["ignore_index"] = -12345  # -100 labels would now index out of range or count
        target = torch.where(target == -100, torch.zeros_like(target), target)
        return original(input, target, *args, **kwargs)

    torch.nn.functional.cross_entropy = cross_entropy


def _accumulation_default_changed():
    import trl

    original = trl.SFTConfig.__post_init__

    def post_init(self):
        original(self)
        self.gradient_accumulation_steps = 2  # as the Unsloth banner once showed

    trl.SFTConfig.__post_init__ = post_init


LORA = "tests/claims/test_lora.py"
QUANT = "tests/claims/test_quantization.py"
MASK = "tests/claims/test_masking.py"
LR = "tests/claims/test_schedule.py"
GGUF = "tests/claims/test_gguf.py"
E2E = "tests/slow/test_finetune_tiny.py"

FAULTS = [
    Fault("lora-scaling-alpha", "1", "LoRA update scaled by alpha instead of alpha/r", "LORA-SCALING", (LORA,), _lora_scaling_is_alpha),
    Fault("lora-rank-capped", "1", "rank silently capped at 16", "LORA-RANK", (LORA,), _rank_capped),
    Fault("lora-mlp-target-dropped", "1", "down_proj dropped from the targets", "LORA-TARGETS", (LORA,), _mlp_target_dropped),
    Fault("lora-b-nonzero", "1", "B initialized non-zero", "LORA-INIT", (LORA,), _b_not_zero),
    Fault("nf4-codebook-shifted", "2", "NF4 codebook shifted by one code", "NF4-FORMULA", (QUANT,), _nf4_codebook_shifted),
    Fault("nf4-double-quant-off", "2", "double quantization silently off", "NF4-DOUBLE-QUANT", (QUANT,), _double_quant_off),
    Fault("marker-merges", "3", "a tokenizer change merges the marker newline", "MASK-TOKENIZATION", (MASK,), _marker_merges),
    Fault("mask-leaks-user-token", "3", "the masker trains the last user token", "MASK-USER-TURNS", (MASK,), _leak_last_user_token),
    Fault("mask-eot-masked", "3", "the model turn's <end_of_turn> is masked", "MASK-USER-TURNS", (MASK,), _end_of_turn_masked),
    Fault("loss-counts-masked", "3", "the loss stops ignoring -100", "MASK-LOSS", (MASK,), _loss_counts_masked_positions),
    Fault("warmup-off-by-one", "4", "warmup shifted by one step", "LR-WARMUP", (LR,), _warmup_off_by_one),
    Fault("cosine-is-linear", "4", "cosine replaced by linear decay", "LR-COSINE", (LR,), _cosine_is_linear),
    Fault("q8-scale-fp32", "5", "Q8_0 scale stored as fp32 (36-byte blocks)", "GGUF-Q8-EXPORT", (GGUF,), _q8_scale_fp32),
    Fault("norm-without-shift", "5", "norms exported without Gemma's +1 shift", "GGUF-Q8-ERROR", (GGUF,), _norm_without_shift),
    Fault("gguf-no-tokenizer", "5", "GGUF written without tokenizer.ggml.tokens", "GGUF-Q8-EXPORT", (GGUF,), _gguf_without_tokenizer),
    Fault("trainer-accumulation-2", "5", "a trainer default turns gradient accumulation to 2", "RECIPE-FIDELITY", (E2E,),
          _accumulation_default_changed),
]


def _area_faults() -> list[Fault]:
    out = []
    for path in sorted(Path(__file__).parent.glob("faults_*.py")):
        module_spec = importlib.util.spec_from_file_location(f"handbook_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
        out += module.FAULTS
    return out


FAULTS += _area_faults()
# The GPU tier's faults (faults_gpu.py) run on a CUDA runner only; FAULTS is what the CPU catalog run plants.
GPU_FAULTS = [f for f in FAULTS if f.gpu]
FAULTS = [f for f in FAULTS if not f.gpu]
BY_ID = {f.id: f for f in FAULTS + GPU_FAULTS}
assert len(BY_ID) == len(FAULTS) + len(GPU_FAULTS), "fault ids must be unique"
