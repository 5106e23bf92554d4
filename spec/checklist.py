"""Handbook §5, "Final Checklist", and the pipeline as a whole."""

from __future__ import annotations

import math

from harness.recipe import HANDBOOK
from spec.blind_spots import check_eos, check_prompt_text, check_sliding_window
from spec.core import Claim, eq, ge, le, verdict_if

SECTION = "5. Checklist and pipeline"
# The CPU tier's tiny run (random weights, 60 steps, still inside the 200-step warmup): the mean loss of the first
# 10 steps over the last 10 was 12.448 / 11.735 = 1.061 (AMD EPYC, 2 cores, torch 2.13.0 CPU). Bound at half that
# fall: a trainer that stops learning (optimizer steps lost, frozen adapters, lr 0) stays at 1.00.
TINY_LOSS_DROP = 1.03
EXPORTERS_KEYS_ONLY_IN_ONE = ["gemma3.rope.freq_base_swa", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_sep_token",
                              "tokenizer.ggml.mask_token_id"]


# Values a library sets that cannot change what is trained: not bounded, listed in the evidence all the same.
TRAINING_NEUTRAL = {
    "changed:report_to": "where metrics are logged",
    "changed:dataset_num_proc": "preprocessing workers, which Unsloth derives from the machine's CPU count",
}
# The values the libraries set silently, as recorded (the hf backend on the CPU; Unsloth 2026.10.9 with TRL on
# seven H100/H200 runs, reports/examples/*/run-unsloth-e2e*.json, all identical). A new or changed one is red.
_SILENT_COMMON = {"max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-08, "packing": False,
                  "completion_only_loss": None, "assistant_only_loss": False, "dataloader_drop_last": False,
                  "torch_compile": False}
SILENT_CPU = {**_SILENT_COMMON, "padding_free": False}
# Unsloth turns padding_free on and leaves the trainer's max_length unset (it truncates to the model's
# max_seq_length, 512, itself).
SILENT_UNSLOTH = {**_SILENT_COMMON, "padding_free": True, "changed:max_length": {"passed": 512, "trainer": None}}


def check_fidelity(m: dict) -> tuple[str, dict]:
    """m: mismatches ({key: (recipe, actual)}), silent ({key: value set by a library, not by the recipe}), backend."""
    training = {k: v for k, v in m["silent"].items() if k not in TRAINING_NEUTRAL}
    evidence = {"mismatches": m["mismatches"], "silent_defaults": m["silent"], "silent_training_defaults": training,
                "checked": m["checked"], "backend": m["backend"],
                "not_bounded": {k: why for k, why in TRAINING_NEUTRAL.items() if k in m["silent"]}}
    return verdict_if(not m["mismatches"] and m["checked"] >= 8, "pass"), evidence


def check_overfit(m: dict) -> tuple[str, dict]:
    """Either the detector on synthetic curves (m: detector_cases, detector_errors), or the reference run's record
    (m: run_plateau, train_loss_final, val_loss, gap = val − train, handbook_says)."""
    evidence = dict(m)
    evidence["truth"] = ("a train loss flat near 0.001 shows memorization of the training set; overfitting is shown by "
                         "the validation loss rising above it (the train–validation gap), which the handbook's rule does not look at")
    if "detector_cases" in m:
        return verdict_if(m["detector_errors"] == 0 and m["detector_cases"] > 0, "corrected"), evidence
    # The run: low train loss without validation rising far above it. How low and how far are the claim's bounds
    # per context (they depend on the dataset: v1's 0.005/0.003 were copied here once and went stale with v2).
    measured = all(isinstance(m.get(k), (int, float)) for k in ("train_loss_final", "val_loss", "gap"))
    return verdict_if(measured, "corrected"), evidence


PAIRED_ALPHA = 0.01  # one-sided paired test over held-out combinations: fewer right than the recorded run, beyond chance


def check_output(m: dict) -> tuple[str, dict]:
    """m: prompts, json_valid_rate, action_rate, exact_match, per_function, goal_exact_match, and `paired`: the
    per-prompt comparison with the recorded baseline run (harness.output_baseline.cluster_paired) or why there is none."""
    evidence = dict(m)
    well_formed = m["prompts"] > 0 and all(0.0 <= m[k] <= 1.0 for k in ("json_valid_rate", "action_rate", "exact_match"))
    paired = m.get("paired") or {}
    # The cluster test's summed difference where present (harness.output_baseline.cluster_paired), else items.
    lost = paired["difference"] < 0 if "difference" in paired else paired.get("worse", 0) > paired.get("better", 0)
    worse = paired.get("pairs", 0) > 0 and lost and paired["p_value"] < PAIRED_ALPHA
    evidence["paired_regression"] = bool(worse)
    if not well_formed or worse:
        return "fail", evidence
    met = m["json_valid_rate"] == 1.0 and m["exact_match"] >= m["goal_exact_match"]
    return ("pass" if met else "unsupported"), evidence


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


# trained_moved_over_merge_error (base vs trained over merged vs trained, max |logit|): a merge at rounding distance
# measures ~100 (tiny, bf16: 93-122); a merge that drops the adapter measures 1.
MERGE_FAITHFUL_RATIO = 10.0
# Whether the merge carries the adapter at all, where it is not at rounding distance (Unsloth's merged_16bit of an
# on-the-fly QLoRA model adds q = W16 − dequant(W4) to it). Until 2026-11-29 this read the ratio of maxima above,
# ≥ 2.5 ("half the lowest" of its first three GPU readings, 5.0-7.9): a maximum over ~680 M logits over another is
# set by single outliers, and the stored clean GPU runs at the same versions read 2.28 to 7.95 (2.28 and 2.36 below
# the bound: a false regression at 8e11688, reports/examples/h200-2026-11-29-gpu-tier-s20). A share of training's
# logit move (fac0d28) saturated instead: an adapter merged twice read 0.89, one dropped from 6 of 18 layers 0.68, on a
# CPU stand-in of the 270M (a review of 2026-11-29). Now, from harness.merge_check.METHOD 3 on: each adapted layer's
# share of its update s·B·A that the merged weights add to the source checkpoint's (merged_weights_carry_adapter),
# within MERGE_WEIGHT_BAND for every layer: 1 up to 16-bit rounding for a merge as trained (Unsloth adds the adapter
# to the pristine W16, so q is not in this difference); 0 for a dropped adapter or layer, the factor for a mis-scaled
# one (unsloth #2009, #5410), ~0 where another layer's update went in; and the merged model's top-1 agreement with the
# trained one at least MERGE_TOP1_FLOOR (clean GPU runs 0.834-0.913; the recorded adapter drops 0.133 and 0.156:
# reports/examples/h200x4-2026-11-28-gpu-faults, h200-2026-11-28-gguf-heldout). Records of methods 1-2 (stored, before
# the weight check) are read by the top-1 floor and MERGE_LEGACY_RATIO_FLOOR, between the drops' 0.91-0.99 and the clean
# runs' lowest 2.28: weaker (a partial drop reads 1.9-2.4 there), kept only so that the stored runs replay.
MERGE_TOP1_FLOOR = 0.5
MERGE_WEIGHT_BAND = (0.9, 1.1)
MERGE_LEGACY_RATIO_FLOOR = 1.5


def _merge_weights_in_band(m: dict, evidence: dict) -> bool:
    """Method 3's weight check (harness.merge_check.merged_weights_carry_adapter): every adapted layer found in both
    checkpoints, and every layer's share in MERGE_WEIGHT_BAND. What failed goes into the evidence."""
    low, high = MERGE_WEIGHT_BAND
    problems = []
    if not m.get("adapted_modules"):
        problems.append("no LoRA-adapted layer was measured")
    if m.get("modules_not_in_checkpoints_count"):
        problems.append(f"{m['modules_not_in_checkpoints_count']} adapted layer(s) missing from the merged or source "
                        f"checkpoint: {m.get('modules_not_in_checkpoints')}")
    share_min, share_max = m.get("weight_share_min"), m.get("weight_share_max")
    if share_min is None or share_max is None or math.isnan(share_min) or math.isnan(share_max):
        problems.append("no layer's share of its update was measured")
    else:
        if share_min < low:
            problems.append(f"{m.get('weight_share_min_module')} carries {share_min:.3f} of its update (< {low})")
        if share_max > high:
            problems.append(f"{m.get('weight_share_max_module')} carries {share_max:.3f} of its update (> {high})")
    if problems:
        evidence["merge_weight_problems"] = problems
    return not problems


def check_merge(m: dict) -> tuple[str, dict]:
    """m (harness.merge_check): merged_vs_trained_max_abs, base_vs_trained_max_abs (max |logit| differences over
    held-out prompts), merged_top1_agreement, and from method 3 on the weight check's adapted_modules,
    modules_not_in_checkpoints_count, weight_share_min/max; or error."""
    evidence = dict(m)
    if m.get("error") or m.get("merged_vs_trained_max_abs") is None:
        return "fail", evidence
    merge_err, moved = m["merged_vs_trained_max_abs"], m["base_vs_trained_max_abs"]
    if not m.get("prompts", 1) or not moved:  # nothing compared, or training moved nothing: the ratio says nothing
        evidence["trained_moved_over_merge_error"] = None
        return "fail", evidence
    if math.isnan(merge_err) or math.isnan(moved):  # NaN logits: `merge_err > 0` is False and read as a perfect merge
        evidence["trained_moved_over_merge_error"] = math.nan
        return "fail", evidence
    ratio = evidence["trained_moved_over_merge_error"] = moved / merge_err if merge_err > 0 else float("inf")
    top1 = m.get("merged_top1_agreement")
    top1_ok = top1 is not None and not math.isnan(top1) and top1 >= MERGE_TOP1_FLOOR
    without_source = m.get("modules_without_a_16bit_source") or 0
    if m.get("method", 1) >= 3 and not (without_source and without_source == m.get("adapted_modules")):
        in_merge = _merge_weights_in_band(m, evidence) and top1_ok
        if without_source:  # some layers measured, others not: the merge cannot be read whole
            evidence.setdefault("merge_weight_problems", []).append(
                f"{without_source} adapted layer(s) have no 16-bit source weight to measure against")
            in_merge = False
    else:  # a stored record of methods 1-2, or a pre-quantized source (no 16-bit weights to compare with): no weight check
        evidence["merge_weights"] = (f"not measured (a record of merge_check method {m.get('method', 1)})"
                                     if m.get("method", 1) < 3 else
                                     "not measured: the source checkpoint holds no 16-bit weights (pre-quantized)")
        in_merge = top1_ok and ratio >= MERGE_LEGACY_RATIO_FLOOR
    # Faithful: the merge is at rounding distance from the trained model and training moved it much further than that
    # (a no-op merge is the base: merge error == training's move, ratio 1). Between the two: the adapter is in the merge
    # but the merged weights are not the ones training ran on (Unsloth folds it into the pristine 16-bit weights, not
    # their NF4 dequantization: the handbook's "export the trained model" holds only up to that term): corrected.
    if ratio >= MERGE_FAITHFUL_RATIO and in_merge:
        return "pass", evidence
    return ("corrected" if in_merge else "fail"), evidence


# GGUF-HELDOUT: what the deployed GGUF may lose in held-out exact match against the trained model it was exported
# from, at the upper end of the drop's 95 % CI (cluster bootstrap over held-out combinations): 0.05, a few items in a
# hundred of the score a user was shown. Why this size: GPU reruns of the same recipe move the score itself by ~3
# points (CHECK-OUTPUT's note), so a smaller drop would not be a finding a user acts on; a merge that drops the adapter
# loses all of training's gain (0.89 → the base's ~0.0), far outside it.
GGUF_HELDOUT_MAX_DROP = 0.05


def check_gguf_heldout(m: dict) -> tuple[str, dict]:
    """m (harness.gguf_heldout.compare): prompts, gguf_exact_match, trained_exact_match, exact_match_drop with its
    exact_match_drop_ci95, answer_agreement, paired (sign-flip test: is the GGUF worse?)."""
    evidence = dict(m)
    if not m.get("prompts"):
        return "fail", evidence
    low_high = m.get("exact_match_drop_ci95") or [m["exact_match_drop"]] * 2
    if low_high[1] <= GGUF_HELDOUT_MAX_DROP:
        return "pass", evidence
    # It loses more, but keeps most of what training gained: the handbook's "export the fine-tuned model" holds only up
    # to that loss (corrected, the measured drop recorded); a GGUF that lost half its score or more is not the model.
    return ("corrected" if m["gguf_exact_match"] >= m["trained_exact_match"] / 2 else "fail"), evidence


def check_e2e(m: dict) -> tuple[str, dict]:
    """m: phases (completed, in order), missing_figures, run_record, steps, loss_first10/loss_last10 (mean train
    loss of the first and last 10 steps), export_recorded (the run's GGUF was written)."""
    required = ["load", "tokenize", "train", "evaluate", "export"]
    evidence = {k: m[k] for k in ("phases", "missing_figures", "run_record", "model", "backend", "steps",
                                  "loss_first10", "loss_last10", "export_recorded")}
    evidence["loss_drop_factor"] = m["loss_first10"] / m["loss_last10"] if m["loss_last10"] else None
    evidence["step_time"] = ("not bounded here: the reference run shares its GPU with the experiment runs; "
                             "tests/gpu/test_performance.py times steps alone (pytest-benchmark)")
    ok = (m["phases"][: len(required)] == required and not m["missing_figures"] and m["export_recorded"]
          and evidence["loss_drop_factor"] is not None and evidence["loss_drop_factor"] > 1.0)
    return verdict_if(ok, "pass"), evidence


CLAIMS = [
    Claim("RECIPE-FIDELITY", SECTION, "both", "args = SFTConfig(learning_rate = 1e-3, lr_scheduler_type = \"cosine\", warmup_steps = 200)",
          "the trainer runs with the recipe's values; every value a library set silently is listed and bounded", "pass",
          check_fidelity, (eq("mismatches", {}),),
          {"tiny": (eq("silent_training_defaults", SILENT_CPU),), "gpu": (eq("silent_training_defaults", SILENT_UNSLOTH),)},
          sources=("reports/examples/*/run-unsloth-e2e*.json", "reports/examples/cpu-2026-11-27-epyc/results.json")),
    Claim("CHECK-OVERFIT", SECTION, "both", "If train/loss is flat at 0.001, you are overfitting. Lower LR to 5e-4.",
          "the plateau detector on synthetic curves; the reference run: train loss at ~0.001 with validation as low (no overfit)", "corrected",
          check_overfit, (),
          # gpu, dataset v1: seven recorded Unsloth runs (reports/examples/*/run-unsloth-e2e*.json, H100/H200): final
          # train loss 2.7e-4..1.04e-3, validation 8.2e-4..1.57e-3, gap 4.1e-4..9.5e-4; none flat by the detector.
          # Dataset v2 (issue #16) changed what these losses measure: v1's validation reused the training templates
          # and values (its loss said nothing); v2's validation holds out its own combinations and values, and its
          # training rows are 12,000 compositional requests instead of 3,200 from 61 templates. The one v2 run (H100
          # 2026-11-28, reports/examples/h100-2026-11-28-dataset-v2/run-unsloth-finetune.json): final train loss
          # 7.4e-3, validation 0.044, gap 0.037, not flat. Bounds at ~3× the v2 run, as they were at ~3× v1's worst:
          # validation rising above train by 0.12 (3× today's generalization gap) is an overfit the handbook's rule
          # would miss.
          {"synthetic": (eq("detector_errors", 0), ge("detector_cases", 20)),
           "gpu": (le("train_loss_final", 0.025), le("val_loss", 0.15), le("gap", 0.12))},
          sources=("reports/examples/*/run-unsloth-e2e*.json", "derived: synthetic curves (tests/claims/test_checklist.py)")),
    Claim("CHECK-OUTPUT", SECTION, "gpu", 'If it outputs {"action": "..."} but the content is wrong, you need more data',
          "held-out Arabic prompts: valid JSON with an action key; exact match per function and overall; paired test vs the recorded run", "unsupported",
          check_output, (),
          # Measured on an H100 (reports/examples/h100-2026-11-2[56]): the handbook's recipe (lr 1e-3, 600 steps,
          # train loss → 3e-4) reached 59% and 41% held-out exact match (two dataset versions) with 92.5% / 99% valid
          # JSON, against the goal of 95%: the recipe memorizes the training phrasings and values; held-out
          # templates are where it fails. Same versions on an H200, seed 3407: valid JSON 0.994 and 0.997
          # (reports/examples/h200-2026-11-26), then 0.878 (reports/examples/h200-2026-11-26-tier: create_event 0/21
          # valid, the model appended invented keys) and 0.922 (…-certify), exact match 0.47-0.56: GPU
          # non-determinism alone moves valid JSON by 12 points, so the old 0.9 floor sat inside that spread. Guarded against moving down: ≥ 0.8 valid JSON (a broken template or mask gives ~0: base model 0%),
          # ≥ 0.35 exact match.
          # A model without training (the CPU tier's tiny) cannot judge this: it is a GPU claim. The paired test
          # (harness.output_baseline: a one-sided paired test against the recorded run's per-prompt outcomes) needs a
          # baseline recorded for the dataset in use; none is recorded for dataset v1 (GPU noise above moves 12 points
          # between reruns): it is recorded with dataset v2.
          # Dataset v2 (issue #16: 2,240 held-out items over 224 held-out combinations): H100 2026-11-28, seed 3407,
          # exact match 0.919 (95% cluster-bootstrap CI 0.898-0.940), valid JSON 1.000, action accuracy 1.000; the
          # errors are copies of held-out value words (cities 0.59/0.66, names, message heads; per-slot analysis in
          # reports/examples/h100-2026-11-28-dataset-v2). The v1 floors (0.8 / 0.35) belonged to v1's test and slept
          # on v2's; tightened for the new test: valid JSON ≥ 0.95 and exact match ≥ 0.85 (the CI's low end less a
          # margin for GPU run-to-run noise, not yet measured on v2); the paired test against a recorded run's
          # per-item outcomes catches smaller moves. It is a sign-flip test over held-out combinations, not an item-level
          # McNemar test: outcomes move in whole clusters (a held-out city right in all its items or none; which cities
          # fail changes between runs: reports/examples/h200x2-2026-11-28-bigpools), and item-level counting called
          # three flipped cities against one a regression (p 0.0007). Larger training value pools (that example, H200,
          # fingerprint 48b975e488e11c61): 0.892 (CI 0.865-0.918) at 600 steps, 0.925 at 1,200; what limits it is
          # copying values the tokenizer cuts differently in the answer (harness.value_tokens: 0.92-0.97 right when
          # the pieces are the same, 0.47-0.54 when re-spelled). No baseline is recorded for 48b975e488e11c61: the
          # test split is to nest values in combinations first (issue #16), which changes the fingerprint again.
          {"gpu": (ge("json_valid_rate", 0.95), ge("exact_match", 0.85), eq("paired_regression", False))},
          sources=("reports/examples/h100-2026-11-28-dataset-v2/run-unsloth-finetune.json", "reports/examples/h100-2026-11-25/results-gpu-tier.json", "reports/examples/h100-2026-11-26/results-gpu-tier.json", "reports/examples/h200-2026-11-26-tier/results.json", "reports/examples/h200-2026-11-26-certify/results.json")),
    Claim("GGUF-Q8-EXPORT", SECTION, "both", 'model.save_pretrained_gguf(..., quantization_method = "Q8_0")',
          "a GGUF whose 2-D weights are Q8_0 (34-byte blocks of 32, fp16 scale), norms F32, metadata complete", "pass",
          check_q8_export, (eq("metadata_missing", []), eq("block_bytes", 34)),
          # llama.cpp's converter (what Unsloth's save_pretrained_gguf runs) and this project's exporter on one
          # checkpoint: bit-identical dequantized tensors, one token table, identical llama.cpp behaviour.
          # Measured 2026-11-26 on tiny: 80/80 tensors equal; before the tokenizer listed its added tokens in
          # tokenizer_config.json, 30 whitespace pieces differed and 3/240 strings tokenized differently.
          # Same on the H200 runner (2026-11-26): Unsloth's save_pretrained_gguf file of the fine-tuned model, offline with
          # the vendored llama.cpp, vs this project's exporter on Unsloth's merged checkpoint: 236/236 tensors identical.
          # Metadata: the two files differ in four functional keys, the same four on tiny (this machine) and on the
          # H200's fine-tuned model (reports/examples/h200-2026-11-26-certify): the converter writes
          # gemma3.rope.freq_base_swa, tokenizer.ggml.add_sep_token and mask_token_id, this project's exporter
          # tokenizer.ggml.add_eos_token; llama.cpp reads both files alike (tokens and greedy outputs above). A new
          # key in one file only, or any non-descriptive value that differs, is red until read and recorded.
          {"llama.cpp-converter": (eq("tensors_differing_vs_project_exporter", 0), eq("tensor_type_differences", 0),
                                   eq("token_table_entries_differing", 0), eq("llamacpp_tokenization_differs", 0),
                                   eq("llamacpp_greedy_equal_rate", 1.0),
                                   eq("metadata_keys_only_in_one", EXPORTERS_KEYS_ONLY_IN_ONE), eq("metadata_values_differing", [])),
           "unsloth": (eq("tensors_differing_vs_project_exporter", 0), eq("tensor_type_differences", 0),
                       eq("token_table_entries_differing", 0), ge("tensors_compared", 236),
                       eq("metadata_keys_only_in_one", EXPORTERS_KEYS_ONLY_IN_ONE), eq("metadata_values_differing", []))},
          sources=("reports/examples/h200-2026-11-26-certify/results.json", "reports/examples/cpu-2026-11-27-epyc/results.json")),
    Claim("GGUF-Q8-ERROR", SECTION, "both", 'quantization_method = "Q8_0"',
          "dequantized tensors vs merged weights: every element within 0.0045·amax of its 32-block", "pass",
          check_q8_error, (le("max_err_over_amax", 0.0045),),
          sources=("derived: Q8_0 rounds x/d to the nearest integer with d = amax/127 stored in fp16: |err| <= d/2 + fp16 rounding of d", "reports/examples/cpu-2026-11-27-epyc/results.json")),
    Claim("GGUF-LLAMACPP", SECTION, "both", "Export: Use model.save_pretrained_gguf(...)",
          "the file loads in llama.cpp; tokenization equals HF's; greedy outputs equal the HF merged model's (rate recorded)", "pass",
          check_llamacpp, (eq("token_mismatches", 0), eq("loaded", True)),
          # First-token (top1) and whole-continuation (greedy, 64 tokens) agreement between the checkpoint in
          # transformers and its Q8_0 export in llama.cpp, 20 prompts, llama-cpp-python 0.3.36. Recorded:
          # tiny (random weights, near-ties everywhere): top1 0.85, greedy 0.15 / 0.20 (this AMD EPYC; the legs run,
          # reports/examples/legs-2026-11-26); the embedded 270M base model: top1 1.0 / 0.95, greedy 0.80 / 0.75
          # (same two machines); the fine-tuned model on GPU (Unsloth's export): top1 1.0 / 1.0, greedy 1.0 / 0.9
          # (reports/examples/h200-2026-11-26-certify, h200-2026-11-26-tier). Bounds: two or three prompts below the
          # worst recorded; on tiny only a collapse of greedy agreement is visible, the power is in top1 and tokens.
          {"tiny": (ge("top1_agreement", 0.75), ge("greedy_agreement", 0.1)),
           "gemma3-270m": (ge("top1_agreement", 0.8), ge("greedy_agreement", 0.6)),
           "gpu": (ge("top1_agreement", 0.9), ge("greedy_agreement", 0.8))},
          sources=("reports/examples/cpu-2026-11-27-epyc/results.json", "reports/examples/legs-2026-11-26/control-results.json", "reports/examples/h200-2026-11-26-certify/results.json", "reports/examples/h200-2026-11-26-tier/results-gguf-llamacpp.json")),
    Claim("MERGE-IS-TRAINED", SECTION, "both", "Export: Use model.save_pretrained_gguf(...)",
          "the merged 16-bit checkpoint an export is made from is the trained model: its logits sit at rounding distance "
          "from the in-memory adapter model's, far from the base's", "pass",
          check_merge, (),
          # tiny (hf backend, 60 steps, merged into a bf16 base as Unsloth's merged_16bit does), 8 held-out prompts:
          # merged vs trained 0.0111 (bf16 rounding), base vs trained 1.352, ratio 122 (reports/examples/
          # cpu-2026-11-27-epyc; the same with the test file alone since the hf backend seeds its LoRA init: unseeded,
          # the file alone measured 0.0152 / 1.404 / 93); top-1 agreement 0.986 (a random model's near-ties). A merge that drops the adapter measures 1.43 vs the trained model (ratio 1). On the GPU
          # the record holds the same measurement (Unsloth's merged folder vs its 4-bit adapter model). First GPU
          # reading (H100 2026-11-28, dataset v2, reports/examples/h100-2026-11-28-dataset-v2): merged vs trained
          # 17.5, base vs trained 88.0 (ratio 5.0, under this claim's 10), top-1 agreement 0.877 over 2,588 positions:
          # Unsloth's merged_16bit does not reproduce the 4-bit model that was trained and evaluated: for a 16-bit
          # source loaded with load_in_4bit (on-the-fly QLoRA, as here) merge_and_overwrite_lora folds the adapter into
          # the pristine W16 while training saw dequant(W4), adding the quantization error q = W16 − dequant(W4)
          # (unsloth-zoo PR #810 describes this and special-cases Falcon-H1 only). Second GPU readings (H200,
          # reports/examples/h200x2-2026-11-28-bigpools): 14.8 vs 117 (ratio 7.9), top-1 agreement 0.908; 1,200 steps 14.3
          # vs 108 (7.6), 0.878. So on the GPU
          # the recorded verdict is `corrected` (the adapter is in the merge, the merged weights are not the trained
          # ones): Unsloth merging into dequantized weights would measure >= 10 there and turn it red as `pass`, a merge
          # that drops the adapter (~1; planted on the GPU: tests/faults/faults_gpu.py) as `fail`. Whether the term
          # costs held-out accuracy is not measured yet (the export's own held-out score, issue #15 spot 1). Since
          # 2026-11-29 the adapter is read from each adapted layer's weights and the top-1 agreement, not from the
          # ratio of maxima (which read 2.28 and 2.36 on clean runs: MERGE_TOP1_FLOOR's note); planted on tiny in
          # tests/unit/test_merge_check.py (dropped, half, twice, one layer dropped, layers shifted). The weight check
          # has no GPU reading yet; the top-1 agreement's latest, H200 at fac0d28: 0.891 against the base's 0.176
          # (reports/examples/h200-2026-11-29-gpu-tier-s20).
          {"tiny": (le("merged_vs_trained_max_abs", 0.05),)},
          context_expected={"gpu": "corrected"},
          sources=("reports/examples/cpu-2026-11-27-epyc/results.json", "reports/examples/h100-2026-11-28-dataset-v2/run-unsloth-finetune.json",
                   "reports/examples/h200x2-2026-11-28-bigpools/run-unsloth-e2e.json",
                   "reports/examples/h200-2026-11-29-gpu-tier-s20/run2-fac0d28/run-unsloth-e2e.json.xz")),
    Claim("GGUF-HELDOUT", SECTION, "gpu", 'Export: Use model.save_pretrained_gguf(..., quantization_method = "Q8_0")',
          "the exported Q8_0 GGUF, read by llama.cpp, answers the held-out requests like the trained model: its exact "
          "match on the same prompts (the same token ids, greedy) is at most 5 points below, at the drop's 95 % CI", "pass",
          check_gguf_heldout, (eq("unmatched", 0),),
          # The end of the chain MERGE-IS-TRAINED (merged folder vs trained model) and GGUF-LLAMACPP (GGUF vs merged
          # folder, 20 prompts) measure in parts: the score of the file a user deploys, on every held-out prompt the
          # reference run scored, paired item by item with the trained model's stored answers (harness.gguf_heldout).
          # It is where the merge's quantization term (MERGE-IS-TRAINED, corrected on the GPU) would cost accuracy.
          # Planted: the GPU fault gpu-merge-drops-adapter (the GGUF is then the base model); the check's verdicts on
          # recorded shapes of evidence: tests/unit/test_gguf_heldout.py. First GPU readings (H200, 2026-11-28,
          # reports/examples/h200-2026-11-28-gguf-heldout, 600 steps, 64 held-out prompts): the clean run's GGUF 0.891
          # = trained 0.891, drop 0.0 (CI -0.047..0.047), answers identical on 60 of 64: pass, as recorded; the merge
          # fault's GGUF 0.000 vs trained 0.922 (drop CI 0.859..0.984): fail. At 64 prompts the CI's half-width (0.047)
          # nearly fills the 5-point margin; the tier's 2,240 prompts have not yet been read.
          sources=("derived: issue #15 blind spot 1; tolerance GGUF_HELDOUT_MAX_DROP",
                   "reports/examples/h200-2026-11-28-gguf-heldout/x2/gpu-fault-results-control.json")),
    Claim("E2E-REFERENCE", SECTION, "both", "This guide maps the mathematical theory directly to the code snippets you are using in your training script.",
          "the full reference fine-tune runs end to end: every figure recorded, the loss falls by the recorded factor, the export written", "pass",
          check_e2e, (eq("missing_figures", []), eq("export_recorded", True)),
          # gpu: seven recorded Unsloth runs (600 steps) cut the mean loss of the first 10 steps by 2465..9534× by
          # the last 10 (reports/examples/*/run-unsloth-e2e*.json): bound at 1000×. tiny: see TINY_LOSS_DROP.
          # Dataset v2's 12,000 compositional rows end higher (last-10 loss 7.4e-3 from 2.55: 345×, H100 2026-11-28);
          # the bound keeps v1's rule (about a third of the lowest recorded drop): 100×.
          {"gpu": (ge("loss_drop_factor", 100.0), ge("steps", HANDBOOK.max_steps)),
           "tiny": (ge("loss_drop_factor", TINY_LOSS_DROP),)},
          sources=("reports/examples/*/run-unsloth-e2e*.json", "reports/examples/cpu-2026-11-27-epyc/results.json")),
]

# Blind spots real bugs fell through (issue #15); their checks live in spec/blind_spots.py.
CLAIMS += [
    Claim("GGUF-PROMPT-TEXT", SECTION, "cpu", 'Export: Use model.save_pretrained_gguf(..., quantization_method = "Q8_0")',
          "from TEXT, through the GGUF's own chat template (llama-cpp-python's chat handler), llama.cpp builds the prompt ids "
          "HF's chat template gives: one <bos>, never <bos><bos>", "pass",
          # Measured on tiny's exports (this project's exporter and llama.cpp's converter, Unsloth's path), 8 held-out
          # prompts: 0 differing, 1 <bos> each; the HF-rendered string with no special tokens added: 0 differing; the
          # same string with the special tokens the GGUF adds (add_bos true): <bos><bos> (recorded, not bounded: the
          # llama.cpp #15086 mechanism). The chat handler adding <bos> again (fault llama-chat-double-bos): 8 of 8
          # differ, 2 <bos>.
          check_prompt_text, (eq("chat_template_prompts_differing", 0), eq("chat_template_bos_total", [1]),
                              eq("gguf_has_chat_template", True), ge("prompts", 8)),
          sources=("derived: HF apply_chat_template(add_generation_prompt=True) ids",)),
    Claim("GGUF-EOS", SECTION, "cpu", 'Export: Use model.save_pretrained_gguf(..., quantization_method = "Q8_0")',
          "the export's end-of-generation tokens are Gemma 3's: eos <eos> (1) in the GGUF, and llama.cpp, from a text prompt "
          "with no stop ids passed, ends generation at <end_of_turn> (106) and at <eos>, never at a plain token", "pass",
          # Measured on tiny's exports (this project's exporter and llama.cpp's converter): tokenizer.ggml.eos_token_id 1,
          # bos 2, no eot_token_id key (llama.cpp finds <end_of_turn> by its text: llama_vocab_eot 106); end-of-generation
          # set among <pad> <eos> <bos> <start_of_turn> <end_of_turn> "\n": [1, 106]; a forced <end_of_turn> or <eos>
          # ends a chat completion with 0 tokens, a forced "\n" runs to max_tokens. The exporter writing <end_of_turn>
          # as eos (fault gguf-eos-rewritten, unsloth #5386's shape): eos 106, <eos> no longer stops. Not bounded here:
          # the checkpoint's generation_config.json lists eos 1 only (the embedded base model's), so transformers'
          # generate and servers reading it stop at <end_of_turn> only when told (the suite passes it explicitly).
          check_eos, (eq("gguf_eos_token_id", 1), eq("eog_ids", [1, 106]), eq("stops_at_end_of_turn", True),
                      eq("stops_at_eos", True), eq("control_newline_stops", False)),
          sources=("derived: Gemma 3's <eos> = 1 and <end_of_turn> = 106 (harness/recipe.py EOS_ID, END_OF_TURN_ID)",)),
    Claim("GGUF-SLIDING-WINDOW", SECTION, "cpu", 'Export: Use model.save_pretrained_gguf(..., quantization_method = "Q8_0")',
          "past Gemma 3's 512-token sliding window (a ~1,500-token prompt) llama.cpp's next-token logits still match "
          "transformers' as closely as inside it; opening the window moves them far more", "pass",
          # Measured on the embedded 270M (float32 in transformers vs its Q8_0 export in llama.cpp), a chat of held-out
          # exchanges, every 25th position, over HF's top-20 ids. Dataset v1 (1,515 tokens): inside the window top-1 1.0
          # (20 positions), max |Δlogit| 0.72, median 0.26; past it top-1 0.875 (35/40), max 2.34, median 0.42. Dataset
          # v2 (1,507 tokens): inside 1.0, 0.60, 0.34; past it 0.95 (38/40), 1.05, 0.40. HF with the window opened (rope
          # and weights unchanged): 0.0 inside; past it median 10.0 / 13.0, max 22.0 / 27.5, top-1 changed at 67.5% /
          # 77.5%. llama.cpp against HF windows of 511/512/513 (v1): medians 0.449/0.420/0.418 (no off-by-one).
          # transformers losing the window (fault gemma3-window-lost, v1): past it top-1 0.2, median 11.9; inside
          # unchanged.
          check_sliding_window, (ge("positions_past_window", 30), ge("top1_agreement_past_window", 0.75),
                                 le("median_logit_diff_past_window", 1.0), le("max_logit_diff_past_window", 5.0),
                                 ge("window_effect_median_past_window", 3.0), le("window_effect_max_within_window", 1e-4),
                                 eq("gguf_sliding_window", 512)),
          sources=("derived: transformers float32 reference, measured in tests/slow/test_sliding_window_270m.py",)),
]
