"""Teacher-forced comparison results: distribution differences against the truth, and verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import plain

# What a verdict can say; "pass"/"fail" in float32, the noise statuses in reduced precision.
VERDICT_STATUSES = ("pass", "fail", "within noise", "beyond noise", "tokenization differs")
OK_STATUSES = ("pass", "within noise")


@dataclass(frozen=True)
class DistributionDiff:
    """One path's next-token distributions against the truth's (transformers float32) over every
    scored position of every prompt."""

    path: str  # e.g. "hfvllm_lab backend (bfloat16)", "transformers (bfloat16)"
    against: str  # e.g. "transformers (float32)"
    positions: int
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float  # share of positions where both argmaxes agree
    max_target_logprob_diff: float  # |dlogp| of the sequence's own next token
    kl_per_position: list[list[float]] = field(default_factory=list)  # per prompt

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in plain(self).items() if k != "kl_per_position"}


@dataclass(frozen=True)
class Verdict:
    status: str  # one of VERDICT_STATUSES
    ratio: float | None  # judged / noise floor (reduced precision only)
    rule: str
    reason: str

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def label(self) -> str:
        return self.status.upper() if self.status in ("pass", "fail") else self.status


@dataclass
class TeacherForced:
    """Every path's distributions on the same sequences; `judged` is the engine under test,
    `floors` what the dtype alone costs paths that are right by construction."""

    dtype: str
    sequences: list[list[int]] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    judged: DistributionDiff | None = None
    floors: list[DistributionDiff] = field(default_factory=list)
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)  # e.g. why a floor was not measured

    def to_frame(self):
        from hfvllm_lab.results._base import frame

        rows = [dict(role="judged", **self.judged.summary())] if self.judged else []
        rows += [dict(role="noise floor", **f.summary()) for f in self.floors]
        return frame(rows)

    def to_dict(self) -> dict[str, Any]:
        return plain({"dtype": self.dtype, "sequences": self.sequences, "prompt_lengths": self.prompt_lengths,
                      "judged": self.judged, "floors": self.floors, "verdict": self.verdict, "notes": self.notes})

    def __repr__(self) -> str:
        from hfvllm_lab import display

        return display.text(self)

    def _repr_html_(self) -> str:
        from hfvllm_lab import display

        return display.html(self)

    def plot(self, ax=None):
        """Per-position KL of the judged path with the noise floor as a band."""
        from hfvllm_lab import display

        return display.plot(self, ax=ax)
