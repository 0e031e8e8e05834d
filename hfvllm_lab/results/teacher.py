"""Teacher-forced comparison results: distribution differences against the truth, and verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, plain

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
    part: str = ""  # which judged part decided it, where there were several ("prefill", "decode")
    caveat: str = ""  # what an ok verdict must not hide, e.g. a module bisect found beyond its noise

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def label(self) -> str:
        label = self.status.upper() if self.status in ("pass", "fail") else self.status
        if self.part and not self.ok:
            label = f"{label} ({self.part})"
        return f"{label}; {self.caveat.split('; ', 1)[-1]}" if self.caveat else label


@dataclass(repr=False)
class TeacherForced(Shown):
    """Every path's distributions on the same sequences; `judged` is the engine under test,
    `floors` what the dtype alone costs paths that are right by construction."""

    dtype: str
    sequences: list[list[int]] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    judged: DistributionDiff | None = None
    floors: list[DistributionDiff] = field(default_factory=list)
    verdict: Verdict | None = None  # the worse of prefill and decode, naming which
    notes: list[str] = field(default_factory=list)  # e.g. why a floor was not measured
    prefill_verdict: Verdict | None = None
    # Decode steps: the engine's own greedy sequences; rows of its decode steps against the truth
    # teacher-forced on the same tokens; floors decoded the same ways (transformers' KV cache, vLLM native).
    decode_sequences: list[list[int]] = field(default_factory=list)
    decode_prompt_lengths: list[int] = field(default_factory=list)
    decode_judged: DistributionDiff | None = None
    decode_floors: list[DistributionDiff] = field(default_factory=list)
    decode_verdict: Verdict | None = None

    def to_frame(self):
        from hfvllm_lab.results._base import frame

        rows = [dict(role="judged", steps="prefill", **self.judged.summary())] if self.judged else []
        rows += [dict(role="noise floor", steps="prefill", **f.summary()) for f in self.floors]
        if self.decode_judged is not None:
            rows.append(dict(role="judged", steps="decode", **self.decode_judged.summary()))
            rows += [dict(role="noise floor", steps="decode", **f.summary()) for f in self.decode_floors]
        return frame(rows)

    def to_dict(self) -> dict[str, Any]:
        return plain({"dtype": self.dtype, "sequences": self.sequences, "prompt_lengths": self.prompt_lengths,
                      "judged": self.judged, "floors": self.floors, "verdict": self.verdict, "notes": self.notes,
                      "prefill_verdict": self.prefill_verdict, "decode_sequences": self.decode_sequences,
                      "decode_prompt_lengths": self.decode_prompt_lengths, "decode_judged": self.decode_judged,
                      "decode_floors": self.decode_floors, "decode_verdict": self.decode_verdict})

    def plot(self, ax=None):
        """Per-position KL of the judged path with the noise floor as a band."""
        from hfvllm_lab import display

        return display.plot(self, ax=ax)
