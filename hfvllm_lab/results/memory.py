"""Memory at each phase of building and serving a model, each figure labelled with its source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, frame, plain, rows_of
from hfvllm_lab.vocab import MEMORY_PHASES as PHASES  # noqa: F401  (defined once, in vocab)


@dataclass(frozen=True)
class MemoryPhase:
    """One phase. `param_bytes` are exact tensor bytes on the device (None where not measured);
    `process_bytes` is the device allocator's figure on accelerators or process RSS on the CPU,
    as `source` says."""

    phase: str
    param_bytes: int | None
    meta_bytes: int | None
    kv_cache_bytes: int | None
    process_bytes: int | None
    source: str
    seconds: float | None = None
    # stateful modules' per-request states (backend/state/), inside vLLM's cache pool with the KV
    state_cache_bytes: int | None = None


@dataclass(repr=False)
class MemoryReport(Shown):
    model: str
    device: str
    backend: str
    phases: list[MemoryPhase] = field(default_factory=list)
    eager_param_bytes: int | None = None  # what a non-meta initialization would have allocated
    note: str = ""
    rank: str = ""  # under tensor / pipeline parallel: the rank this describes ("" for one rank)

    def phase(self, name: str) -> MemoryPhase | None:
        return next((p for p in self.phases if p.phase == name), None)

    @property
    def meta_saving_bytes(self) -> int | None:
        """Parameter bytes the meta-device construction did not allocate up front."""
        meta = self.phase("meta")
        if meta is None or self.eager_param_bytes is None or meta.param_bytes is None:
            return None
        return self.eager_param_bytes - meta.param_bytes

    def to_frame(self):
        return frame(rows_of(self.phases))

    def to_dict(self) -> dict[str, Any]:
        return plain({"model": self.model, "device": self.device, "backend": self.backend,
                      "phases": self.phases, "eager_param_bytes": self.eager_param_bytes,
                      "meta_saving_bytes": self.meta_saving_bytes, "note": self.note,
                      "rank": self.rank})

    def plot(self, ax=None):
        from hfvllm_lab import display

        return display.plot(self, ax=ax)
