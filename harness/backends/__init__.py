"""Training backends behind one interface, chosen by name from one registry.

A backend loads the model and tokenizer for a recipe, shapes the tokenized rows its trainer wants,
builds the trainer, names the masker whose labels it trains on, and exports the result. The CLI's
choices, `harness.finetune`, `harness.step_server` and the GPU tier's parametrization read `names()`;
adding a backend is one module here that calls `register` (tests/unit/test_backends.py registers a
fake one and runs it through `finetune` on `tiny`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class BuiltTrainer:
    """What build_trainer returns: the trainer, the SFT arguments this run passed (RECIPE-FIDELITY lists the
    trainer's other values as library defaults), and how long the backend's own masking took (None if none ran)."""

    trainer: object
    passed: dict
    masking_seconds: float | None = None


class Backend:
    """The interface. Subclasses set `name`, `needs_gpu`, `masker_name` and implement the methods."""

    name: str = ""
    needs_gpu: bool = False
    masker_name: str = ""  # whose labels the trainer trains on (MASK-USER-TURNS' evidence names it)

    def expected(self, recipe, on_gpu: bool) -> tuple[dict, dict]:
        """(what this backend on this device is meant to run, declared deviations from the handbook with reasons)."""
        return recipe.to_dict(), {}

    def prepare(self) -> None:
        """Import what `load` needs, before the model is resolved: a run started while another process materializes
        its model (the GPU tier's, tests/gpu/conftest.py model_for_the_runs) imports meanwhile, then waits."""

    def load(self, source_dir: Path, recipe, expected: dict):
        """(peft model, tokenizer) for the recipe."""
        raise NotImplementedError

    def train_rows(self, rows: list[dict]) -> list[dict]:
        """The tokenized, reference-masked training rows as this backend's trainer takes them."""
        return rows

    def build_trainer(self, model, tokenizer, recipe, out_dir: Path, source_dir: Path, train_rows, val_rows,
                      report_to: str, callbacks: list, on_gpu: bool) -> BuiltTrainer:
        raise NotImplementedError

    def export(self, model, tokenizer, out_dir: Path, source_dir: Path) -> dict:
        """Merge and write the Q8_0 GGUF; the artifacts' paths (and any error) as a dict."""
        raise NotImplementedError


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Backend:
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _load_builtin() -> None:
    from harness.backends import hf, unsloth  # noqa: F401  (each registers itself; imports nothing heavy)
