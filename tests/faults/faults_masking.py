"""Planted regressions of §3 (responses only) in the libraries the handbook's trainer runs: unsloth_zoo's
masking, transformers' collator and Trainer, TRL's dataset preparation. Each is a runtime patch of a library,
never of this project's measuring code."""

from __future__ import annotations

from fault import Fault

MASK = "tests/claims/test_masking.py"


def _unsloth_zoo_importable():
    import os

    from harness.doctor import UNSLOTH_ZOO_ENV

    for key, value in UNSLOTH_ZOO_ENV.items():
        os.environ.setdefault(key, value)
    from unsloth_zoo import dataset_utils

    return dataset_utils


def _masker_writes_input_ids():
    """unsloth_zoo's train_on_responses_only(trainer) writes the -100 into input_ids too: the handbook's literal
    "have their ID set to -100"."""
    dataset_utils = _unsloth_zoo_importable()
    original = dataset_utils.train_on_responses_only

    def train_on_responses_only(trainer, *args, **kwargs):
        out = original(trainer, *args, **kwargs)
        if trainer is None or kwargs.get("return_function"):
            return out

        def ids_too(row):
            return {"input_ids": [-100 if label == -100 else t for t, label in zip(row["input_ids"], row["labels"])]}

        out.train_dataset = out.train_dataset.map(ids_too)
        return out

    dataset_utils.train_on_responses_only = train_on_responses_only


def _collator_pads_ids_left():
    """transformers' DataCollatorForSeq2Seq (the collator Unsloth swaps in) pads input_ids on the left while the
    attention mask and the labels stay padded on the right: every shorter row's ids shift against its labels."""
    import torch
    from transformers.data import data_collator

    original = data_collator.DataCollatorForSeq2Seq.__call__

    def call(self, features, return_tensors=None):
        batch = original(self, features, return_tensors)
        ids, attention = batch["input_ids"], batch["attention_mask"]
        for row in range(ids.shape[0]):
            pad = int((attention[row] == 0).sum())
            if pad:
                ids[row] = torch.cat([ids[row, -pad:], ids[row, :-pad]])
        return batch

    data_collator.DataCollatorForSeq2Seq.__call__ = call


def _trl_truncates_keep_end():
    """TRL's SFTConfig default truncation side becomes keep_end (DPOConfig's default): truncated rows lose their
    <bos> and developer turn and keep the conversation's tail."""
    import trl

    original = trl.SFTConfig.__post_init__

    def post_init(self):
        original(self)
        self.truncation_mode = "keep_end"

    trl.SFTConfig.__post_init__ = post_init


def _trl_assistant_mask_drops_end_of_turn():
    """TRL's tokenization for assistant_only_loss leaves each model turn's <end_of_turn> out of the assistant mask
    (the model is never trained to stop: the case TRL's own is_chat_template_stop_token_trained warns about)."""
    from trl.trainer import sft_trainer

    original = sft_trainer._tokenize

    def tokenize(processing_class, input, **kwargs):
        out = original(processing_class, input, **kwargs)
        if "assistant_masks" in out:
            end_of_turn = processing_class.convert_tokens_to_ids("<end_of_turn>")
            out["assistant_masks"] = [0 if t == end_of_turn else m for t, m in zip(out["input_ids"], out["assistant_masks"])]
        return out

    sft_trainer._tokenize = tokenize


def _loss_token_count_includes_masked():
    """transformers' Trainer counts every label position (-100 included) as the loss's num_items_in_batch: the summed
    cross entropy is divided by too many tokens (the gradient-accumulation normalization bug class)."""
    from transformers import Trainer

    def count(self, batch_samples, device):
        return sum(batch["labels"][..., 1:].numel() for batch in batch_samples)

    Trainer._get_num_items_in_batch = count


FAULTS = [
    Fault("mask-writes-input-ids", "3", "Unsloth's train_on_responses_only writes -100 into input_ids too",
          "MASK-LABELS-NOT-IDS", (MASK,), _masker_writes_input_ids),
    Fault("collator-pads-ids-left", "3", "the collator pads input_ids on the other side than labels and attention mask",
          "MASK-LABELS-NOT-IDS", (MASK,), _collator_pads_ids_left),
    Fault("trl-truncates-keep-end", "3", "TRL's SFT truncation keeps the end of long conversations",
          "MASK-USER-TURNS", (MASK,), _trl_truncates_keep_end),
    Fault("trl-mask-drops-eot", "3", "TRL's assistant mask leaves <end_of_turn> untrained",
          "MASK-AGREEMENT", (MASK,), _trl_assistant_mask_drops_end_of_turn),
    Fault("loss-items-count-masked", "3", "the trainer's loss token count includes -100 positions",
          "MASK-LOSS", (MASK,), _loss_token_count_includes_masked),
]
