"""The blind-spot claims' checks (issue #15) on planted rows and probes: the bug classes the fault catalog does not plant
through a library (an <eos> appended after the template, rows dropped by truncation, Unsloth's checkpoint fallback
moved to the recipe's max_seq_length)."""

import torch

import spec
from spec.core import evaluate

BOS, EOS, SOT, EOT, NL = 2, 1, 105, 106, 107


class FakeTokenizer:
    """Renders a chat as marker words and maps each word to one id: enough for harness.row_facts."""

    bos_token_id, eos_token_id = BOS, EOS
    IDS = {"<bos>": BOS, "<eos>": EOS, "<start_of_turn>": SOT, "<end_of_turn>": EOT, "\n": NL}

    def convert_tokens_to_ids(self, token):
        return self.IDS[token]

    def apply_chat_template(self, messages, tokenize=False, **kwargs):
        words = ["<bos>"]
        for m in messages:
            words += ["<start_of_turn>", m["role"], "\n", *m["content"].split(), "<end_of_turn>", "\n"]
        return words

    def __call__(self, texts, add_special_tokens=False):
        ids = [[self.IDS.get(w, 1000 + sum(map(ord, w))) for w in words] for words in texts]
        return {"input_ids": ids}


CHATS = [[{"role": "user", "content": f"turn on light {i}"}, {"role": "assistant", "content": f"ok {i}"}] for i in range(4)]


def _special(rows):
    from harness.row_facts import rendered_reference, special_token_facts

    tokenizer = FakeTokenizer()
    facts = special_token_facts(tokenizer, CHATS, rows, max_length=512)
    return facts, rendered_reference(tokenizer, CHATS)


def test_template_rows_pass_and_an_appended_eos_is_red():
    """TRL appending <eos> after the final <end_of_turn>\\n (trl #3318's class): rows_with_eos, rows_past_template_end."""
    _, references = _special([])
    rows = [list(r) for r in references]
    facts, _ = _special(rows)
    assert not evaluate(spec.CLAIMS["ROWS-SPECIAL-TOKENS"], {**facts, "rows": 100}, "tiny").regression
    planted, _ = _special([r + [EOS] for r in rows])
    assert planted["rows_with_eos"] == 4 and planted["rows_past_template_end"] == 4
    assert evaluate(spec.CLAIMS["ROWS-SPECIAL-TOKENS"], {**planted, "rows": 100}, "tiny").regression


def test_rows_dropped_by_truncation_are_red():
    """A trainer that drops rows (TRL's filter of rows left without a label, trl #3927) and cuts another."""
    from harness.row_facts import truncation_facts

    full = [[BOS, SOT, 5, NL, 7, EOT, NL, SOT, 6, NL, 8, 9, EOT, NL] for _ in range(4)]
    masker = lambda ids: [t if i >= 10 else -100 for i, t in enumerate(ids)]  # noqa: E731  (the model turn's ids)
    given = [{"input_ids": ids, "labels": masker(ids)} for ids in full]
    labels = torch.tensor([masker(ids) for ids in full])
    whole = truncation_facts([len(r) for r in full] * 300, full, masker, given, given, [{"labels": labels}], 512, 512)
    assert not evaluate(spec.CLAIMS["ROWS-TRUNCATION"], whole, "tiny").regression
    held = [given[0], {"input_ids": full[1][:11], "labels": masker(full[1])[:11]}]
    cut = truncation_facts([len(r) for r in full] * 300, full, masker, given, held, [{"labels": labels[:2]}], 512, 11)
    assert cut["rows_dropped"] == 2 and cut["rows_cut"] == 1 and cut["trained_tokens_lost"] > 0
    assert evaluate(spec.CLAIMS["ROWS-TRUNCATION"], cut, "tiny").regression


STANDARD, OFFLOADED = "torch.utils.checkpoint.checkpoint", "unsloth_zoo.gradient_checkpointing.unsloth_checkpoint"


def boundary_probes(at_512=OFFLOADED, layer_fn_at_512=STANDARD) -> dict:
    """GC-FALLBACK-BOUNDARY's measurements as the H200 recorded them (bigpools, 2026-11-28): 18 layers bound to torch's
    checkpoint at each length, Unsloth's CheckpointFunction swapped in where unsloth_checkpoint is installed."""
    functions = {"511": STANDARD, "512": at_512, "513": OFFLOADED}
    autograd = {k: "UnslothCheckpointFunction" if "unsloth" in v else "CheckpointFunction" for k, v in functions.items()}
    layers = {"511": {STANDARD: 18}, "512": {layer_fn_at_512: 18}, "513": {STANDARD: 18}}
    return {"recipe_max_seq_length": 512, "functions": functions, "layer_functions": layers, "autograd_functions": autograd}


def test_the_fallback_moved_to_the_recipes_length_is_red():
    """Unsloth falling back at max_seq_length <= 512 instead of < 512: the recipe loses its offloaded checkpoint."""
    def judged(at_512):
        return evaluate(spec.CLAIMS["GC-FALLBACK-BOUNDARY"], boundary_probes(at_512), "gpu")

    assert not judged(OFFLOADED).regression
    assert judged(STANDARD).regression


def test_layers_that_bypass_the_installed_checkpoint_are_red():
    """transformers #43203: the layers bound to checkpoint(use_reentrant=False), whose non-reentrant path never applies
    CheckpointFunction, so Unsloth's offload is installed and never called (the installed function still reads
    unsloth_checkpoint: the function check alone stays green)."""
    bypass = boundary_probes(layer_fn_at_512=f"{STANDARD}(use_reentrant=False)")
    outcome = evaluate(spec.CLAIMS["GC-FALLBACK-BOUNDARY"], bypass, "gpu")
    assert outcome.evidence["unsloth_at_512"] is True and outcome.evidence["layers_reach_unsloth_at_512"] is False
    assert outcome.regression
    unmeasured = {**boundary_probes(), "autograd_functions": {}}  # a probe that lost the measurement is not a pass
    assert evaluate(spec.CLAIMS["GC-FALLBACK-BOUNDARY"], unmeasured, "gpu").regression
