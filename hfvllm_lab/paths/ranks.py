"""An engine's ranks (tensor x pipeline parallel) and how the probes' per-rank answers become one answer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# Probes whose answer lives where the logits are computed: the last pipeline stage.
FROM_LAST_STAGE = frozenset({"lab_logprobs_stop", "lab_decode_take"})
# Probes whose answers are merged over the pipeline stages (each stage ran part of the model).
MERGED = frozenset({"lab_capture_stop", "lab_attention_counts", "lab_timing_stop"})


@dataclass(frozen=True)
class RankLayout:
    """vLLM orders ranks pipeline-major: rank = pipeline_rank * tensor_size + tensor_rank."""

    tensor_size: int = 1
    pipeline_size: int = 1

    @property
    def world(self) -> int:
        return self.tensor_size * self.pipeline_size

    @property
    def stage_leaders(self) -> list[int]:
        """The first (tensor rank 0) rank of each pipeline stage, in stage order."""
        return [p * self.tensor_size for p in range(self.pipeline_size)]

    @property
    def last_leader(self) -> int:
        return self.stage_leaders[-1]

    def describe(self) -> str:
        parts = []
        if self.tensor_size > 1:
            parts.append(f"tensor parallel {self.tensor_size}")
        if self.pipeline_size > 1:
            parts.append(f"pipeline parallel {self.pipeline_size}")
        return " x ".join(parts) + f" ({self.world} ranks)" if parts else "one rank"


def rank_label(rank: dict) -> str:
    """"rank 1 (tp 1/2, pp 0/2)" from a worker's `lab_rank()`; "" for a single rank."""
    if rank["tensor_size"] * rank["pipeline_size"] == 1:
        return ""
    return (f"rank {rank['rank']} (tp {rank['tensor_rank']}/{rank['tensor_size']}, "
            f"pp {rank['pipeline_rank']}/{rank['pipeline_size']})")


def merge_answers(method: str, answers: list[Any], layout: RankLayout) -> Any:
    """One answer from every rank's: the last stage's for logits probes, the stages' merged for those each
    stage answers for its own layers, rank 0's otherwise."""
    if layout.world == 1 or len(answers) == 1:
        return answers[0]
    if method in FROM_LAST_STAGE:
        return answers[layout.last_leader]
    stages = [answers[r] for r in layout.stage_leaders]
    if method == "lab_timing_stop":  # every rank's own timing kept beside the merge, tensor parallel too
        return merge_timings(stages, answers, layout)
    if method not in MERGED or layout.pipeline_size == 1:
        return answers[0]
    if method == "lab_capture_stop":
        return merge_captures(stages)
    return merge_attention_counts(stages)


def merge_captures(stages: list[dict | None]) -> dict | None:
    """Hidden states by module, in execution order: each module from the stage that ran it."""
    if all(s is None for s in stages):
        return None
    out: dict = {}
    for captured in stages:
        for name, tensor in (captured or {}).items():
            out.setdefault(name, tensor)
    return out


def merge_attention_counts(stages: list):
    """Each stage counts its own layers; forward calls are counted by every stage (one per step)."""
    first = stages[0]
    layers = sorted((row for s in stages for row in s.layers), key=lambda row: row.layer)
    return replace(first, layers=layers)


def merge_timings(stages: list, answers: list, layout: RankLayout):
    """Each stage times its own modules; a step's time is the sum of the stages' (they run one after the
    other for one batch). Every rank's own timing stays in `ranks`."""
    if any(s is None for s in stages):
        return stages[0]
    first = stages[0]
    if layout.pipeline_size == 1:
        return replace(first, rank=f"rank 0 of {layout.describe()}; every rank in .ranks",
                       ranks=[a for a in answers if a is not None])
    rows = [row for s in stages for row in s.rows]
    step_seconds = {phase: sum(s.step_seconds.get(phase, 0.0) for s in stages) for phase in first.step_seconds}
    hooks = {phase: sum(s.hooks_per_step.get(phase, 0) for s in stages) for phase in first.hooks_per_step}
    return replace(first, rows=rows, step_seconds=step_seconds, hooks_per_step=hooks,
                   rank=f"{layout.describe()}: the pipeline stages' rows merged; every rank in .ranks",
                   ranks=[a for a in answers if a is not None])


__all__ = ["FROM_LAST_STAGE", "MERGED", "RankLayout", "merge_answers", "rank_label"]
