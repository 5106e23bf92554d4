"""Handbook §4 on the CPU: the LR a real SFTTrainer's optimizer holds, step by step."""

import pytest
from hypothesis import given, strategies as st

from harness.recipe import HANDBOOK
from spec.schedule import after_warmup_facts, closed_form, handbook_form


@pytest.fixture(scope="module")
def lr_trace(tiny_dir, tmp_path_factory):
    """A function (η, W, T) -> the optimizer's lr at steps 0..T of an SFTTrainer built with that config."""
    from harness.train_hf import build_sft_trainer

    trainer = build_sft_trainer(tiny_dir, HANDBOOK, tmp_path_factory.mktemp("lr"),
                                train_rows=4, load_in_4bit=False)

    def trace(peak: float, warmup: int, total: int) -> list[float]:
        trainer.args.learning_rate, trainer.args.warmup_steps, trainer.args.max_steps = peak, warmup, total
        trainer.optimizer, trainer.lr_scheduler = None, None
        trainer.create_optimizer_and_scheduler(num_training_steps=total)
        lrs = []
        for _ in range(total + 1):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
        return lrs

    trace.config = trainer.args
    return trace


def _max_rel_err(lrs, peak, warmup, total):
    return max(abs(lr - closed_form(t, peak, warmup, total)) / peak for t, lr in enumerate(lrs))


@pytest.mark.claim("LR-COSINE")
def test_optimizer_lr_follows_warmup_then_shifted_cosine(lr_trace, certify):
    """At every step the optimizer's lr equals η·t/W, then ½η(1+cos(π(t−W)/(T−W))), to 1e-12 relative."""
    cases = [(HANDBOOK.learning_rate, HANDBOOK.warmup_steps, HANDBOOK.max_steps)]
    worst = {"err": _max_rel_err(lr_trace(*cases[0]), *cases[0])}
    steps = {"n": 601}

    @given(st.floats(1e-6, 1e-1), st.integers(0, 60), st.integers(1, 120))
    def any_config(peak, warmup, extra):
        total = warmup + extra
        lrs = lr_trace(peak, warmup, total)
        worst["err"] = max(worst["err"], _max_rel_err(lrs, peak, warmup, total))
        steps["n"] += len(lrs)
        cases.append((peak, warmup, total))

    any_config()
    certify("LR-COSINE", {"cases": len(cases), "steps": steps["n"], "max_rel_err": worst["err"],
                          "scheduler": lr_trace.config.lr_scheduler_type.value
                          if hasattr(lr_trace.config.lr_scheduler_type, "value") else str(lr_trace.config.lr_scheduler_type)}, "tiny")


@pytest.mark.claim("LR-HANDBOOK-FORMULA")
def test_handbook_cosine_formula_misses_the_warmup_shift(lr_trace, certify, run_extras):
    """Past the warmup the trainer's lr is the cosine shifted by W; the handbook's ½ηmax(1+cos(tπ/T)) is not."""
    peak, warmup, total = HANDBOOK.learning_rate, HANDBOOK.warmup_steps, HANDBOOK.max_steps
    lrs = lr_trace(peak, warmup, total)
    run_extras["lr_schedule"] = {"trainer": lrs, "handbook": [handbook_form(t, peak, total) for t in range(total + 1)],
                                 "warmup": warmup}
    certify("LR-HANDBOOK-FORMULA", after_warmup_facts(lrs, peak, warmup, total), "tiny")


@pytest.mark.claim("LR-WARMUP")
def test_warmup_ramps_linearly_from_zero_to_peak(lr_trace, certify):
    """lr is 0 at the first step, linear through the warmup, exactly 1e-3 at step 200, and 0 at the end."""
    peak, warmup, total = HANDBOOK.learning_rate, HANDBOOK.warmup_steps, HANDBOOK.max_steps
    lrs = lr_trace(peak, warmup, total)
    certify("LR-WARMUP", {
        "peak": peak, "lr_first": lrs[0], "lr_at_warmup": lrs[warmup], "lr_last": lrs[total],
        "lr_last_optimizer_step": lrs[total - 1],
        "linear_max_rel_err": max(abs(lrs[t] - peak * t / warmup) / peak for t in range(1, warmup)),
        "monotone_warmup": all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1])),
    }, "tiny")
