"""Handbook §5, "Final Checklist", and the pipeline as a whole."""

from __future__ import annotations

from spec.core import Claim, eq, ge, le, verdict_if

SECTION = "5. Checklist and pipeline"


def check_fidelity(m: dict) -> tuple[str, dict]:
    """m: mismatches ({key: (recipe, actual)}), silent ({key: value set by a library, not by the recipe}), backend."""
    evidence = {"mismatches": m["mismatches"], "silent_defaults": m["silent"], "checked": m["checked"], "backend": m["backend"]}
    return verdict_if(not m["mismatches"] and m["checked"] >= 8, "pass"), evidence


def check_overfit(m: dict) -> tuple[str, dict]:
    """m: detector_cases, detector_errors (synthetic curves misjudged), run_plateau, train_loss_final, val_loss, gap."""
    evidence = dict(m)
    evidence["truth"] = ("a train loss flat near 0.001 shows memorization of the training set; overfitting is shown by "
                         "the validation loss rising above it (the train–validation gap), which the handbook's rule does not look at")
    return verdict_if(m["detector_errors"] == 0 and m["detector_cases"] > 0, "corrected"), evidence


def check_output(m: dict) -> tuple[str, dict]:
    """m: prompts, json_valid_rate, action_rate, exact_match, per_function, goal_exact_match (None: machinery only)."""
    evidence = dict(m)
    well_formed = m["prompts"] > 0 and all(0.0 <= m[k] <= 1.0 for k in ("json_valid_rate", "action_rate", "exact_match"))
    if m.get("goal_exact_match") is None:
        return verdict_if(well_formed, "pass"), evidence
    met = m["json_valid_rate"] == 1.0 and m["exact_match"] >= m["goal_exact_match"]
    return ("pass" if met else "unsupported") if well_formed else "fail", evidence


def check_q8_export(m: dict) -> tuple[str, dict]:
    """m: exporter, tensors, q8_0_2d (2-D weights stored Q8_0), other_2d, norms_f32, norms_total, block_bytes, metadata_missing."""
    evidence = dict(m)
    ok = (m["other_2d"] == [] and m["norms_f32"] == m["norms_total"] and m["block_bytes"] == 34
          and not m["metadata_missing"] and m["q8_0_2d"] > 0)
    return verdict_if(ok, "pass"), evidence


def check_q8_error(m: dict) -> tuple[str, dict]:
    """m: tensors, max_err_over_amax (per 32-block, over all tensors), worst_tensor."""
    evidence = dict(m)
    return verdict_if(m["max_err_over_amax"] <= 0.0045 and m["tensors"] > 0, "pass"), evidence


def check_llamacpp(m: dict) -> tuple[str, dict]:
    """m: loaded, token_strings, token_mismatches, prompts, greedy_agreement, top1_agreement."""
    evidence = dict(m)
    ok = m["loaded"] and m["token_mismatches"] == 0 and m["token_strings"] >= 200
    return verdict_if(ok, "pass"), evidence


def check_e2e(m: dict) -> tuple[str, dict]:
    """m: phases (completed, in order), missing_figures, run_record."""
    required = ["load", "tokenize", "train", "evaluate", "export"]
    evidence = {"phases": m["phases"], "missing_figures": m["missing_figures"], "run_record": m["run_record"],
                "model": m["model"], "backend": m["backend"], "steps": m["steps"]}
    return verdict_if(m["phases"][: len(required)] == required and not m["missing_figures"], "pass"), evidence


CLAIMS = [
    Claim("RECIPE-FIDELITY", SECTION, "both", "args = SFTConfig(learning_rate = 1e-3, lr_scheduler_type = \"cosine\", warmup_steps = 200)",
          "the trainer runs with the recipe's values; every value a library set silently is listed", "pass",
          check_fidelity, (eq("mismatches", {}),)),
    Claim("CHECK-OVERFIT", SECTION, "both", "If train/loss is flat at 0.001, you are overfitting. Lower LR to 5e-4.",
          "plateau detector validated on synthetic curves, applied to the run next to the train/validation gap", "corrected",
          check_overfit, (eq("detector_errors", 0), ge("detector_cases", 20))),
    Claim("CHECK-OUTPUT", SECTION, "both", 'If it outputs {"action": "..."} but the content is wrong, you need more data',
          "held-out Arabic prompts: valid JSON with an action key; exact match per function and overall", "pass",
          check_output, (),
          # Measured on an H100 (reports/examples/h100-2026-11-2[56]): the handbook's recipe (lr 1e-3, 600 steps,
          # train loss → 3e-4) reached 59% and 41% held-out exact match (two dataset versions) with 92.5% / 99% valid
          # JSON, against the goal of 95%: the recipe memorizes the training phrasings and values; held-out
          # templates are where it fails. Same versions on an H200, seed 3407: valid JSON 0.994 and 0.997
          # (reports/examples/h200-2026-11-26), then 0.878 (reports/examples/h200-2026-11-26-tier: create_event 0/21
          # valid, the model appended invented keys) and 0.922 (…-certify), exact match 0.47-0.56: GPU
          # non-determinism alone moves valid JSON by 12 points, so the old 0.9 floor sat inside that spread. Guarded against moving down: ≥ 0.8 valid JSON (a broken template or mask gives ~0: base model 0%),
          # ≥ 0.35 exact match.
          {"gpu": (ge("json_valid_rate", 0.8), ge("exact_match", 0.35))}, {"gpu": "unsupported"}),
    Claim("GGUF-Q8-EXPORT", SECTION, "both", 'model.save_pretrained_gguf(..., quantization_method = "Q8_0")',
          "a GGUF whose 2-D weights are Q8_0 (34-byte blocks of 32, fp16 scale), norms F32, metadata complete", "pass",
          check_q8_export, (eq("metadata_missing", []), eq("block_bytes", 34)),
          # llama.cpp's converter (what Unsloth's save_pretrained_gguf runs) and this project's exporter on one
          # checkpoint: bit-identical dequantized tensors, one token table, identical llama.cpp behaviour.
          # Measured 2026-11-26 on tiny: 80/80 tensors equal; before the tokenizer listed its added tokens in
          # tokenizer_config.json, 30 whitespace pieces differed and 3/240 strings tokenized differently.
          # Same on the H200 runner (2026-11-26): Unsloth's save_pretrained_gguf file of the fine-tuned model, offline with
          # the vendored llama.cpp, vs this project's exporter on Unsloth's merged checkpoint: 236/236 tensors identical.
          {"llama.cpp-converter": (eq("tensors_differing_vs_project_exporter", 0), eq("tensor_type_differences", 0),
                                   eq("token_table_entries_differing", 0), eq("llamacpp_tokenization_differs", 0),
                                   eq("llamacpp_greedy_equal_rate", 1.0)),
           "unsloth": (eq("tensors_differing_vs_project_exporter", 0), eq("tensor_type_differences", 0),
                       eq("token_table_entries_differing", 0), ge("tensors_compared", 236))}),
    Claim("GGUF-Q8-ERROR", SECTION, "both", 'quantization_method = "Q8_0"',
          "dequantized tensors vs merged weights: every element within 0.0045·amax of its 32-block", "pass",
          check_q8_error, (le("max_err_over_amax", 0.0045),)),
    Claim("GGUF-LLAMACPP", SECTION, "both", "Export: Use model.save_pretrained_gguf(...)",
          "the file loads in llama.cpp; tokenization equals HF's; greedy outputs equal the HF merged model's (rate recorded)", "pass",
          check_llamacpp, (eq("token_mismatches", 0), eq("loaded", True)),
          # Measured 2026-11-25 (CPU, llama-cpp-python 0.3.36): 17/20 first tokens equal between the bf16
          # checkpoint in transformers and its Q8_0 export in llama.cpp; the 3 others are near-ties of the
          # base model echoing its prompt. One more prompt of tolerance.
          {"gemma3-270m": (ge("top1_agreement", 0.8),)}),
    Claim("E2E-REFERENCE", SECTION, "both", "This guide maps the mathematical theory directly to the code snippets you are using in your training script.",
          "the full reference fine-tune runs end to end and its run record holds every figure", "pass",
          check_e2e, (eq("missing_figures", []),)),
]
