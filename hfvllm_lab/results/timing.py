"""Per-layer timing split into prefill and decode steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import frame, plain, rows_of

# Phases and kinds of timed modules ("layer" rows contain their "attention"/"mlp"/"norm" rows),
# defined once in hfvllm_lab.vocab.
from hfvllm_lab.vocab import DECODE, MIXED, PREFILL, TOP_LEVEL  # noqa: F401
from hfvllm_lab.vocab import TIMED_KINDS as KINDS  # noqa: F401


@dataclass(frozen=True)
class ModuleTime:
    module: str
    kind: str
    layer: int | None
    phase: str
    calls: int
    mean_seconds: float  # mean time per step in which the module ran


@dataclass
class LayerTiming:
    path: str  # "vllm" or "hf"
    device: str
    timer: str  # "device events" or "perf_counter"
    rows: list[ModuleTime] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)  # phase -> steps averaged
    step_seconds: dict[str, float] = field(default_factory=dict)  # phase -> mean measured step time
    warmup_steps: int = 0  # steps run before timing and excluded
    hooks_per_step: dict[str, int] = field(default_factory=dict)
    probe_seconds_per_hook: float = 0.0  # measured cost of one start/stop pair of the probe

    def phase_rows(self, phase: str, kinds: tuple[str, ...] | None = None) -> list[ModuleTime]:
        return [r for r in self.rows if r.phase == phase and (kinds is None or r.kind in kinds)]

    def top_level_seconds(self, phase: str) -> float:
        """Sum of the non-overlapping rows of a phase (embedding, layers, final norm, LM head)."""
        return sum(r.mean_seconds for r in self.phase_rows(phase, TOP_LEVEL))

    def probe_overhead_seconds(self, phase: str) -> float:
        """Estimated cost of the probes in one step of `phase`."""
        return self.hooks_per_step.get(phase, 0) * self.probe_seconds_per_hook

    def to_frame(self):
        return frame(rows_of(self.rows))

    def to_dict(self) -> dict[str, Any]:
        return plain({"path": self.path, "device": self.device, "timer": self.timer, "rows": self.rows,
                      "steps": self.steps, "step_seconds": self.step_seconds, "warmup_steps": self.warmup_steps,
                      "hooks_per_step": self.hooks_per_step, "probe_seconds_per_hook": self.probe_seconds_per_hook})

    def __repr__(self) -> str:
        from hfvllm_lab import display

        return display.text(self)

    def _repr_html_(self) -> str:
        from hfvllm_lab import display

        return display.html(self)

    def plot(self, phase: str | None = None, ax=None):
        from hfvllm_lab import display

        return display.plot(self, phase=phase, ax=ax)
