"""Handbook §3, "Optimization: Training on Responses Only"."""

from __future__ import annotations

import statistics

from spec.core import Claim, eq, ge, le, verdict_if

SECTION = "3. Responses only"
USER_IDS = [105, 2364, 107]
MODEL_IDS = [105, 4368, 107]


def check_tokenization(m: dict) -> tuple[str, dict]:
    """m: user_alone, model_alone, contexts, contexts_found (markers found as the same ids in context), planted_merge_detected."""
    evidence = dict(m)
    ok = (m["user_alone"] == USER_IDS and m["model_alone"] == MODEL_IDS
          and m["contexts_found"] == m["contexts"] and m["planted_merge_detected"])
    return verdict_if(ok, "pass"), evidence


def check_user_turns(m: dict) -> tuple[str, dict]:
    """m: conversations, tokens, wrongly_trained (non-model tokens with a label), wrongly_masked (model-turn tokens
    without one), model_turns, model_turns_trained, end_of_turn_trained, markers_masked, implementation."""
    evidence = dict(m)
    ok = (m["wrongly_trained"] == 0 and m["wrongly_masked"] == 0 and m["model_turns_trained"] == m["model_turns"]
          and m["end_of_turn_trained"] and m["markers_masked"])
    return verdict_if(ok, "pass"), evidence


def check_labels_not_ids(m: dict) -> tuple[str, dict]:
    """m: input_ids_changed (count of examples whose input_ids changed), ids_equal_minus_100, labels_minus_100."""
    evidence = dict(m)
    evidence["truth"] = "input_ids are untouched; the labels of masked positions become -100"
    ok = m["input_ids_changed"] == 0 and m["ids_equal_minus_100"] == 0 and m["labels_minus_100"] > 0
    return verdict_if(ok, "corrected"), evidence


def check_agreement(m: dict) -> tuple[str, dict]:
    """m: cases, implementations (names), disagreements (count), first_disagreement."""
    evidence = dict(m)
    return verdict_if(m["disagreements"] == 0 and m["cases"] > 0 and len(m["implementations"]) >= 2, "pass"), evidence


def check_loss(m: dict) -> tuple[str, dict]:
    """m: loss_vs_manual (|HF loss − mean CE over unmasked| / loss, float32), masked_perturbation_loss_delta, masked_perturbation_grad_delta."""
    evidence = dict(m)
    ok = (m["loss_vs_manual"] <= 1e-6 and m["masked_perturbation_loss_delta"] == 0.0
          and m["masked_perturbation_grad_delta"] == 0.0 and m["unmasked_perturbation_loss_delta"] > 0)
    return verdict_if(ok, "pass"), evidence


def check_stability(m: dict) -> tuple[str, dict]:
    """m: exact = {"masked": [per seed], "unmasked": [...]}; loss_spread = std over seeds of the answer-only val loss."""
    masked, unmasked = m["exact"]["masked"], m["exact"]["unmasked"]
    gap = statistics.mean(masked) - statistics.mean(unmasked)
    noise = max(statistics.pstdev(masked), statistics.pstdev(unmasked), 0.01)
    evidence = {"exact_masked": masked, "exact_unmasked": unmasked, "mean_gap": round(gap, 4), "noise": round(noise, 4),
                "loss_spread_masked": m["loss_spread"]["masked"], "loss_spread_unmasked": m["loss_spread"]["unmasked"],
                "val_loss": m.get("val_loss"), "seeds": m["seeds"], "n_seeds": len(m["seeds"])}
    if gap > 2 * noise:
        return "pass", evidence
    return ("refuted" if gap < -2 * noise else "unsupported"), evidence


CLAIMS = [
    Claim("MASK-TOKENIZATION", SECTION, "cpu", 'instruction_part = "<start_of_turn>user\\n", response_part = "<start_of_turn>model\\n"',
          "the markers tokenize to [105, 2364, 107] / [105, 4368, 107] alone and in context; merges are detected", "pass",
          check_tokenization, (eq("user_alone", USER_IDS), eq("model_alone", MODEL_IDS))),
    Claim("MASK-USER-TURNS", SECTION, "both", "all tokens between <start_of_turn>user and <start_of_turn>model have their ID set to -100",
          "system/developer/user turns and markers are -100; every model turn trains, <end_of_turn> included", "pass",
          check_user_turns, (eq("wrongly_trained", 0), eq("wrongly_masked", 0), ge("conversations", 20))),
    Claim("MASK-LABELS-NOT-IDS", SECTION, "both", "have their ID set to -100",
          "input_ids are unchanged; the labels become -100", "corrected",
          check_labels_not_ids, (eq("input_ids_changed", 0),)),
    Claim("MASK-AGREEMENT", SECTION, "both", "from unsloth.chat_templates import train_on_responses_only",
          "Unsloth's masker, TRL's assistant-only loss and this project's reference masker agree on every conversation", "pass",
          check_agreement, (eq("disagreements", 0), ge("cases", 50))),
    Claim("MASK-LOSS", SECTION, "cpu", "The Cross-Entropy loss ignores -100",
          "loss = mean CE over unmasked positions; masked tokens/logits change neither loss nor gradients", "pass",
          check_loss, (le("loss_vs_manual", 1e-6), eq("masked_perturbation_grad_delta", 0.0))),
    Claim("MASK-STABILITY", SECTION, "gpu", "This is critical for stabilizing the 270M model",
          "experiment: masked vs unmasked training on the reference task, held-out exact match and loss spread", "pass",
          check_stability, (ge("n_seeds", 3),),
          # Measured three times on an H200 (real 270M, 600 steps, seeds 3407-3409), held-out exact match masked vs
          # unmasked: [0.606, 0.478, 0.550] vs [0.722, 0.656, 0.709], [0.606, 0.478, 0.466] vs [0.644, 0.706, 0.609],
          # [0.563, 0.622, 0.472] vs [0.725, 0.506, 0.709]: gaps -0.151, -0.137, -0.095 against thresholds (2 seed
          # spreads) 0.105, 0.127, 0.199 → `refuted`, `refuted`, `unsupported` (one unmasked run at 0.506 widened the
          # spread). Answer-only validation loss spread over seeds: masked 0.0018/0.0018/0.0010 vs unmasked
          # 0.0002/0.0001/0.0000. Training on every token was never worse and always steadier; both verdicts are
          # recorded, and `pass` (masking clearly better) would be red.
          {}, {"gpu": "refuted|unsupported"}),
]
