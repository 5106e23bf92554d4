"""The handbook's claims as executable specs: one module per handbook section, one registry."""

from spec import checklist, lora, masking, quantization, schedule
from spec.core import VERDICTS, Bound, Claim, Outcome, evaluate

SECTIONS = (lora, quantization, masking, schedule, checklist)
CLAIMS: dict[str, Claim] = {c.id: c for module in SECTIONS for c in module.CLAIMS}

__all__ = ["CLAIMS", "SECTIONS", "VERDICTS", "Bound", "Claim", "Outcome", "evaluate"]
