"""Planted regressions for the blind spots real bugs fell through (issue #15): gradient accumulation, special tokens and
truncation in the rows the trainer holds, a 4-bit checkpoint read back, the text-prompt path through llama.cpp, the
activation the MLP executes, attention past Gemma 3's sliding window, and the export's end-of-generation tokens. Each
is a runtime patch of a library, modelled on a bug that happened (the thread is named), and turns exactly its claim
red. Faults marked `child=True` patch llama-cpp-python, which runs only in harness.llama_text's child process: that
child applies them."""

from __future__ import annotations

from fault import Fault

ACCUM = "tests/claims/test_accumulation.py"
ROWS = "tests/claims/test_trainer_rows.py"
ACTIVATION = "tests/claims/test_mlp_activation.py"
SERIALIZE = "tests/claims/test_nf4_serialized.py"
EXPORT = "tests/claims/test_gguf_tokens.py"
WINDOW = "tests/slow/test_sliding_window_270m.py"


def _loss_normalized_per_micro_batch():
    """transformers counts the loss's tokens in one micro-batch, not in the whole accumulated step: each micro-batch's
    summed cross entropy is divided by its own count and the micro-batches' losses add up, so the step's gradient is
    ~A times the one-batch gradient and weighted by micro-batch (the gradient-accumulation normalization bug:
    transformers #34191)."""
    from transformers import Trainer

    original = Trainer._get_num_items_in_batch

    def count(self, batch_samples, device):
        return original(self, batch_samples[:1], device)

    Trainer._get_num_items_in_batch = count


def _scheduler_steps_per_micro_batch():
    """The lr scheduler steps after every micro-batch instead of once per optimizer step (accelerate #963: a prepared
    scheduler stepping while gradients do not sync)."""
    from transformers import Trainer

    original = Trainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = original(self, model, inputs, num_items_in_batch)
        if not self.accelerator.gradient_state.sync_gradients:
            self.lr_scheduler.step()
        return loss

    Trainer.training_step = training_step


def _chat_template_adds_second_bos():
    """transformers' apply_chat_template tokenizes the rendered chat, which begins with the template's own <bos>, with
    add_special_tokens=True: every row starts <bos><bos> (trl #1400, PR #3091; the reason Unsloth's notebooks strip
    '<bos>' from rendered text)."""
    from transformers import tokenization_utils_base as tub

    base = tub.PreTrainedTokenizerBase
    original_template, original_call = base.apply_chat_template, base.__call__

    def apply_chat_template(self, *args, **kwargs):
        self.__dict__["_fault_templating"] = True
        try:
            return original_template(self, *args, **kwargs)
        finally:
            self.__dict__.pop("_fault_templating", None)

    def call(self, *args, **kwargs):
        if self.__dict__.get("_fault_templating"):
            kwargs["add_special_tokens"] = True
        return original_call(self, *args, **kwargs)

    base.apply_chat_template, base.__call__ = apply_chat_template, call


def _trl_max_length_shrunk():
    """TRL's SFTConfig truncates to 340 tokens whatever max_length it is given (a default that shadows the recipe's
    max_seq_length 512): long rows lose the end of their answers (trl #3927/#3930: truncation reported as success)."""
    import trl

    original = trl.SFTConfig.__post_init__

    def post_init(self):
        original(self)
        self.max_length = 340

    trl.SFTConfig.__post_init__ = post_init


def _mlp_runs_exact_gelu():
    """transformers' activation registry maps gelu_pytorch_tanh to exact (erf) GELU: the config still says tanh, the
    MLP computes erf (Gemma ran exact GELU where tanh GELU was needed: transformers #29402/#29729)."""
    from transformers import activations

    activations.ACT2FN["gelu_pytorch_tanh"] = activations.GELUActivation  # the registry modeling_gemma3 builds from


def _sliding_window_lost():
    """transformers' Gemma 3 config loses its sliding window: the sliding layers attend to the whole prompt (as Gemma 2's
    did after a transformers refactor: #35235, fixed in #35681). Rope and weights are unchanged, so every prompt shorter
    than 512 tokens is unaffected."""
    from transformers.models.gemma3 import configuration_gemma3

    cls = configuration_gemma3.Gemma3TextConfig
    original = cls.__post_init__

    def post_init(self, **kwargs):
        original(self, **kwargs)
        self.sliding_window = 1 << 20

    cls.__post_init__ = post_init


def _exporter_rewrites_eos():
    """The exporter writes <end_of_turn> as the GGUF's eos token (the shape of unsloth #5386, where a merge rewrote
    eos_token and servers never stopped): <eos> no longer ends generation in llama.cpp."""
    import gguf

    original = gguf.GGUFWriter.add_eos_token_id

    def add_eos_token_id(self, token_id):
        original(self, 106)

    gguf.GGUFWriter.add_eos_token_id = add_eos_token_id


def _llama_chat_adds_bos_to_template():
    """llama-cpp-python's chat handler adds <bos> to a prompt its chat template already began with <bos>: the prompt
    runs <bos><bos> (llama.cpp #15086/#15326, Gemma 3 270M). Applied in the llama.cpp child process
    (harness.llama_text honours HARNESS_FAULT for faults marked `child`)."""
    from llama_cpp import llama_chat_format

    original = llama_chat_format.Jinja2ChatFormatter.__call__

    def call(self, **kwargs):
        response = original(self, **kwargs)
        response.added_special = False
        return response

    llama_chat_format.Jinja2ChatFormatter.__call__ = call


def _llama_stops_at_eos_id_only():
    """llama-cpp-python ends generation only at the vocabulary's eos id, not at every end-of-generation token: a chat
    model that ends its turn with <end_of_turn> runs on (servers that stop at eos_token_id alone: unsloth #5386).
    Applied in the llama.cpp child process."""
    from llama_cpp import llama_cpp as lib  # the module llama_cpp.llama's generation loop calls

    lib.llama_vocab_is_eog = lambda vocab, token: token == lib.llama_vocab_eos(vocab)


def _quant_state_offset_wrong_dtype():
    """bitsandbytes reads the nested quant state's offset of a pre-quantized checkpoint as float16 (bitsandbytes #1949,
    fixed in #1971: a quant-state offset read with the wrong dtype): every reloaded absmax, so every weight, moves."""
    import bitsandbytes.functional as F
    import torch

    original = F.QuantState.from_dict.__func__

    def from_dict(cls, qs_dict, device):
        state = original(cls, qs_dict, device)
        if state.offset is not None:
            state.offset = state.offset.to(torch.float16)
        return state

    F.QuantState.from_dict = classmethod(from_dict)


FAULTS = [
    Fault("accum-loss-per-micro-batch", "4", "accumulated micro-batches each normalized by their own token count",
          "ACCUM-EQUIVALENCE", (ACCUM,), _loss_normalized_per_micro_batch),
    Fault("accum-scheduler-per-micro-batch", "4", "the lr scheduler steps once per micro-batch", "ACCUM-EQUIVALENCE",
          (ACCUM,), _scheduler_steps_per_micro_batch),
    Fault("chat-template-double-bos", "3", "apply_chat_template adds a second <bos> to the rendered chat",
          "ROWS-SPECIAL-TOKENS", (ROWS,), _chat_template_adds_second_bos),
    Fault("trl-max-length-shrunk", "3", "TRL truncates rows to 340 tokens whatever max_length says", "ROWS-TRUNCATION",
          (ROWS,), _trl_max_length_shrunk),
    Fault("nf4-reload-offset-fp16", "2", "a reloaded 4-bit checkpoint's quant-state offset read as float16",
          "NF4-SERIALIZED", (SERIALIZE,), _quant_state_offset_wrong_dtype),
    Fault("mlp-exact-gelu", "2", "the MLP runs exact GELU while the config says gelu_pytorch_tanh",
          "GC-ACTIVATION-RUNTIME", (ACTIVATION,), _mlp_runs_exact_gelu),
    Fault("gemma3-window-lost", "5", "transformers' Gemma 3 attends globally in its sliding-window layers",
          "GGUF-SLIDING-WINDOW", (WINDOW,), _sliding_window_lost),
    Fault("gguf-eos-rewritten", "5", "the exporter writes <end_of_turn> as the eos token", "GGUF-EOS", (EXPORT,),
          _exporter_rewrites_eos),
    Fault("llama-stops-at-eos-id-only", "5", "llama.cpp ends generation at the eos id only, not at <end_of_turn>",
          "GGUF-EOS", (EXPORT,), _llama_stops_at_eos_id_only, child=True),
    Fault("llama-chat-double-bos", "5", "llama.cpp's chat path adds <bos> to an already templated prompt",
          "GGUF-PROMPT-TEXT", (EXPORT,), _llama_chat_adds_bos_to_template, child=True),
]
