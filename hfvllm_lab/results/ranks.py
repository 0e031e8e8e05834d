"""What each rank of a tensor x pipeline parallel engine holds and did: one row per rank, and per rank its
own replacement log, memory report and (after profile()) timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, frame, plain
from hfvllm_lab.results.memory import MemoryReport
from hfvllm_lab.results.replacements import ReplacementLog
from hfvllm_lab.results.timing import LayerTiming


@dataclass(frozen=True)
class RankRow:
    """One rank: where it sits, which decoder layers it holds, its bytes, its records and step times."""

    rank: int
    tensor_rank: int
    tensor_size: int
    pipeline_rank: int
    pipeline_size: int
    layers: tuple[int, int] | None  # decoder layers held, [start, end); None: all of them
    param_bytes: int  # loaded parameters (shards, plus what every tensor rank holds whole)
    replicated_bytes: int  # of param_bytes, held whole by every tensor rank of its stage
    kv_cache_bytes: int
    process_bytes: int | None
    actions: dict[str, int] = field(default_factory=dict)  # record action -> count on this rank
    step_seconds: dict[str, float] = field(default_factory=dict)  # phase -> mean step time (after profile())
    tied_copy_bytes: int = 0  # of param_bytes, a tied head's own copy of rank 0's embedding (last stage)

    @property
    def label(self) -> str:
        return f"rank {self.rank} (tp {self.tensor_rank}/{self.tensor_size}, pp {self.pipeline_rank}/{self.pipeline_size})"

    @property
    def layers_text(self) -> str:
        return "all" if self.layers is None else f"{self.layers[0]}-{self.layers[1] - 1}"


@dataclass(repr=False)
class RankReport(Shown):
    model: str
    backend: str
    layout: str  # "tensor parallel 2 x pipeline parallel 2 (4 ranks)"
    executor: str
    rows: list[RankRow] = field(default_factory=list)
    replacements: list[ReplacementLog] = field(default_factory=list)
    memory: list[MemoryReport] = field(default_factory=list)
    timing: list[LayerTiming] = field(default_factory=list)  # every rank's, after profile(); else empty
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def model_param_bytes(self) -> int:
        """The whole model's parameter bytes from the ranks' own: every rank's shards, and what a stage's
        tensor ranks each hold whole counted once per stage, less a tied head's copy of the embedding (what one
        device would hold)."""
        shards = sum(r.param_bytes - r.replicated_bytes - r.tied_copy_bytes for r in self.rows)
        whole = sum(r.replicated_bytes for r in self.rows if r.tensor_rank == 0)
        return shards + whole

    def to_frame(self):
        rows = []
        for r in self.rows:
            row: dict[str, Any] = {"rank": r.rank, "tensor_rank": r.tensor_rank, "pipeline_rank": r.pipeline_rank,
                                   "layers": r.layers_text, "param_bytes": r.param_bytes,
                                   "replicated_bytes": r.replicated_bytes, "kv_cache_bytes": r.kv_cache_bytes,
                                   "process_bytes": r.process_bytes}
            row.update({f"records_{a}": n for a, n in r.actions.items()})
            row.update({f"{p}_step_seconds": s for p, s in r.step_seconds.items()})
            rows.append(row)
        return frame(rows)

    def to_dict(self) -> dict[str, Any]:
        return plain({"model": self.model, "backend": self.backend, "layout": self.layout, "executor": self.executor,
                      "rows": [dict(plain(r), label=r.label) for r in self.rows],
                      "model_param_bytes": self.model_param_bytes(),
                      "replacements": self.replacements, "memory": self.memory, "timing": self.timing,
                      "notes": self.notes})


__all__ = ["RankReport", "RankRow"]
