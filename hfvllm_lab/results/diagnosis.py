"""`Session.diagnose()`: lenses that each flip one engine factor on the same sampled sequences, every
arm judged against transformers in float32 relative to the measured noise floor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, frame, plain
from hfvllm_lab.results.teacher import DistributionDiff, Verdict


@dataclass(frozen=True)
class ArmResult:
    """One setting of a lens: its distributions against the truth on the lens' positions."""

    name: str  # e.g. "decode, alone", "batch of 4", "float32 head"
    setting: str  # what ran, in words (engine, composition, positions)
    diff: DistributionDiff | None = None  # against transformers float32
    floor: DistributionDiff | None = None  # the larger floor on the same positions
    verdict: Verdict | None = None
    outside_bands: dict[str, float] = field(default_factory=dict)  # share of target tokens, ratio vs truth
    tokens_per_second: float | None = None  # greedy decode speed of this arm's engine, where measured
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.verdict.ok

    @property
    def floor_ratio(self) -> float | None:
        """KL mean against the floor on the same positions (the verdict's ratio; for a float32 arm, which
        is judged by |dlogp| alone, its KL over the floor it was shown beside)."""
        if self.verdict is not None and self.verdict.ratio is not None:
            return self.verdict.ratio
        if self.diff is None or self.floor is None or not self.floor.kl_mean:
            return None
        return self.diff.kl_mean / self.floor.kl_mean

    @property
    def limit_ratio(self) -> float | None:
        """The arm's measure over its verdict's limit (beyond noise, or FAIL, above 1): KL against the
        floor over the noise factor in reduced precision; max |dlogp| over the float32 tolerance."""
        from hfvllm_lab.rules import FLOAT32_LOGPROB_TOLERANCE, NOISE_FACTOR

        if self.verdict is None or self.diff is None:
            return None
        if self.verdict.ratio is not None:
            return self.verdict.ratio / NOISE_FACTOR
        return self.diff.max_target_logprob_diff / FLOAT32_LOGPROB_TOLERANCE


@dataclass
class LensResult:
    name: str  # e.g. "decode", "batch", "prefix caching"
    factor: str  # what the lens flips, in words
    arms: list[ArmResult] = field(default_factory=list)  # arms[0]: the session's own setting
    status: str = ""  # one of rules.LENS_STATUSES
    reason: str = ""
    kl_between: list[float | None] = field(default_factory=list)  # KL mean of arms[0] against each arm
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The one-row summary: the worst flipped arm against the baseline."""
        base = self.arms[0] if self.arms else None
        worst = max(self.arms[1:], key=lambda a: (a.verdict is not None and not a.ok, a.floor_ratio or 0.0),
                    default=None)
        out = dict(lens=self.name, status=self.status, factor=self.factor, seconds=round(self.seconds, 1))
        for role, arm in (("base", base), ("flip", worst)):
            out[f"{role}_arm"] = arm.name if arm else None
            out[f"{role}_kl_mean"] = arm.diff.kl_mean if arm and arm.diff else None
            out[f"{role}_kl_p99"] = arm.diff.kl_p99 if arm and arm.diff else None
            out[f"{role}_ratio"] = arm.floor_ratio if arm else None
            for band, share in (arm.outside_bands.items() if arm else ()):
                out[f"{role}_{band}"] = share
            out[f"{role}_tok_s"] = arm.tokens_per_second if arm else None
        return out


@dataclass(repr=False)
class Diagnosis(Shown):
    model: str
    dtype: str
    backend: str
    sequences: int = 0  # sampled sequences every lens scores
    positions: int = 0  # decode positions per arm
    lenses: list[LensResult] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def beyond(self) -> list[str]:
        """Lenses whose flip pushes the engine beyond noise: the factors that cause a mismatch."""
        from hfvllm_lab.rules import LENS_CAUSE

        return [lens.name for lens in self.lenses if lens.status == LENS_CAUSE]

    @property
    def remedies(self) -> list[str]:
        from hfvllm_lab.rules import LENS_REMEDY

        return [lens.name for lens in self.lenses if lens.status == LENS_REMEDY]

    @property
    def mismatched(self) -> list[str]:
        """Lenses where the engine is beyond noise in some arm: causes, remedies, and lenses beyond noise
        in every arm (a mismatch this factor does not decide)."""
        from hfvllm_lab.rules import LENS_MISMATCHED

        return [lens.name for lens in self.lenses if lens.status in LENS_MISMATCHED]

    @property
    def failed(self) -> list[str]:
        from hfvllm_lab.rules import LENS_FAILED

        return [lens.name for lens in self.lenses if lens.status == LENS_FAILED]

    def lens(self, name: str) -> LensResult:
        for lens in self.lenses:
            if lens.name == name:
                return lens
        raise KeyError(f"no lens {name!r}; lenses: {', '.join(lens.name for lens in self.lenses)}")

    def to_frame(self):
        return frame([lens.row() for lens in self.lenses])

    def to_dict(self) -> dict[str, Any]:
        return plain({"model": self.model, "dtype": self.dtype, "backend": self.backend, "sequences": self.sequences,
                      "positions": self.positions, "beyond": self.beyond, "remedies": self.remedies,
                      "mismatched": self.mismatched, "failed": self.failed,
                      "lenses": self.lenses, "seconds": self.seconds, "settings": self.settings, "notes": self.notes})

    def plot(self, ax=None):
        """Per lens, each arm's KL mean against the truth relative to its floor."""
        from hfvllm_lab import display

        return display.plot(self, ax=ax)
