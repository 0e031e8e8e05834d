"""Which attention was selected, and what each layer actually executed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, frame, plain, rows_of


@dataclass(frozen=True)
class AttentionLayerRow:
    layer: int
    module: str
    implementation: str  # e.g. "CPU_ATTN" (vLLM backend name), "sdpa", "eager"
    calls: int  # forward calls counted since the counters were last reset
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_size: int | None = None
    sliding_window: int | None = None
    fallbacks: int = 0  # calls that ran another implementation than selected
    fallback_reason: str = ""


@dataclass(repr=False)
class AttentionReport(Shown):
    path: str  # "vllm" or "hf"
    selected: str  # "vllm", "sdpa" or "eager"
    reason: str  # why this selection (requested, or forced by the model)
    rows: list[AttentionLayerRow] = field(default_factory=list)
    forward_calls: int = 0  # model forward calls the counts cover
    note: str = ""

    @property
    def total_fallbacks(self) -> int:
        return sum(r.fallbacks for r in self.rows)

    def implementations(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.implementation] = out.get(r.implementation, 0) + r.calls
        return out

    def to_frame(self):
        return frame(rows_of(self.rows))

    def to_dict(self) -> dict[str, Any]:
        return plain({"path": self.path, "selected": self.selected, "reason": self.reason, "rows": self.rows,
                      "forward_calls": self.forward_calls, "note": self.note})

