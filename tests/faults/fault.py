"""One planted regression: a runtime patch of a library's behaviour and the claim it must turn red."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Fault:
    id: str
    section: str
    description: str
    expected_claim: str
    tests: tuple[str, ...]
    apply: Callable[[], None]
    # True: the patch targets a library that runs only in a child process of the suite (llama-cpp-python, kept out of
    # the pytest process): that child applies it (harness.pytest_plugin.apply_planted_fault_in_child), pytest does not.
    child: bool = False
    # True: the patch targets Unsloth's own code paths and runs in the GPU tier only (applied by harness.train_unsloth
    # right after `import unsloth`, in the fine-tune and probe processes); never in the CPU catalog run.
    gpu: bool = False
    # For GPU faults: what the planted change must show in its claim's evidence (any context) for the red to count:
    # a GPU run that crashes or fails an assertion before certify turns its claims red too, with no evidence.
    shows: Optional[Callable[[dict], bool]] = None
