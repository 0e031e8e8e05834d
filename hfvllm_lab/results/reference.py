"""Two checkpoints through one lens: a quantized (or fine-tuned) model against its reference, scored on
the same text by the same engine setup, as llama.cpp's `perplexity --kl-divergence` reports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, frame, plain


@dataclass(frozen=True)
class ModuleDrift:
    module: str
    relative_error: float  # RMS of (model - reference) over the reference's RMS, per token, averaged


@dataclass(repr=False)
class ReferenceComparison(Shown):
    model: str
    reference: str
    engine: str  # what scored both, e.g. "hfvllm_lab backend (bfloat16)"
    tokens: int  # scored positions of the text
    kl_mean: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    ppl: float  # the model's perplexity on the text
    ppl_reference: float
    delta_ppl: float  # ppl - ppl_reference
    delta_ppl_low: float  # 95 % interval of delta_ppl (paired per-token log-likelihood differences)
    delta_ppl_high: float
    kl_per_position: list[float] = field(default_factory=list)
    drift: list[ModuleDrift] = field(default_factory=list)  # per module, execution order
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def worst_modules(self, count: int = 5) -> list[ModuleDrift]:
        return sorted(self.drift, key=lambda d: d.relative_error, reverse=True)[:count]

    def to_frame(self):
        """One row: the statistics (kl_per_position and drift are in to_dict)."""
        return frame([{k: v for k, v in plain(self).items() if k not in ("kl_per_position", "drift", "notes")}])

    def drift_frame(self):
        return frame([plain(d) for d in self.drift])

    def to_dict(self) -> dict[str, Any]:
        return plain({f: getattr(self, f) for f in self.__dataclass_fields__})

    def plot(self, ax=None):
        """KL per position of the text, and relative drift per module."""
        from hfvllm_lab import display

        return display.plot(self, ax=ax)
