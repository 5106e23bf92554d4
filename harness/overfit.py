"""The handbook's checklist rule "train/loss flat at 0.001 → overfitting", as a detector one can test."""

from __future__ import annotations

import statistics

PLATEAU_LEVEL = 0.005  # "flat at 0.001": a median loss at or below this counts as that low
FLATNESS = 0.25  # the two halves of the window differ by at most 25% of the window's median
WINDOW = 50


def loss_plateau(losses: list[float], window: int = WINDOW) -> dict:
    """Is the train loss flat near 0.001 over the last `window` logged steps? Returns the facts."""
    if len(losses) < window:
        return {"plateau": False, "reason": f"fewer than {window} logged steps", "median": None}
    tail = losses[-window:]
    median = statistics.median(tail)
    half = window // 2
    drift = abs(statistics.mean(tail[:half]) - statistics.mean(tail[half:]))
    flat = drift <= FLATNESS * max(median, 1e-12)
    low = median <= PLATEAU_LEVEL
    return {"plateau": flat and low, "median": median, "drift": drift, "flat": flat, "low": low}


def advice(train_losses: list[float], val_loss: float | None) -> dict:
    """The handbook's rule next to the evidence that decides overfitting: the train/validation gap."""
    facts = loss_plateau(train_losses)
    final = statistics.mean(train_losses[-10:]) if train_losses else None
    gap = None if val_loss is None or final is None else val_loss - final
    return {**facts, "train_loss_final": final, "val_loss": val_loss, "gap": gap,
            "handbook_says": "lower LR to 5e-4" if facts["plateau"] else "no action"}
