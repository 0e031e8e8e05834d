"""Rollout mismatch: sampled continuations from the engine, scored by the trainer, as RL measures it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, frame, plain
from hfvllm_lab.results.teacher import Verdict


@dataclass(frozen=True)
class MismatchMetrics:
    """One rollout path's sampled-token log-probabilities against the trainer's (mismatch.py has the
    formulas; names follow verl's rollout correction)."""

    path: str  # the rollout side, e.g. "hfvllm_lab backend (bfloat16)"
    against: str  # the trainer, e.g. "trainer: transformers (float32)"
    tokens: int
    sequences: int
    mean_abs_log_ratio: float
    p99_abs_log_ratio: float
    max_abs_log_ratio: float
    kl: float  # k1: mean(log p_rollout - log p_trainer)
    k3_kl: float  # mean(exp(lr) - lr - 1), lr = log p_trainer - log p_rollout
    training_ppl: float
    rollout_ppl: float
    log_ppl_diff: float
    log_ppl_abs_diff: float
    chi2_token: float
    chi2_seq: float
    outside_bands: dict[str, float]  # "outside_0.5_2" -> share of tokens with ratio outside [0.5, 2]
    seq_log_ratio_mean: float
    seq_log_ratio_std: float
    seq_ess: float  # normalised effective sample size of the sequence weights, in (0, 1]
    probs_diff_max: float  # |p_trainer - p_rollout| of the sampled token
    probs_diff_mean: float
    probs_diff_std: float
    log_ratios: list[list[float]] = field(default_factory=list)  # per sequence, per token

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in plain(self).items() if k not in ("log_ratios", "outside_bands")}
        data.update(self.outside_bands)
        return data

    @property
    def position_means(self) -> list[float]:
        """Mean |log-ratio| at each position of the continuation, over the sequences that reach it."""
        width = max((len(row) for row in self.log_ratios), default=0)
        means = []
        for j in range(width):
            col = [abs(row[j]) for row in self.log_ratios if j < len(row)]
            means.append(sum(col) / len(col))
        return means


@dataclass(frozen=True)
class RolloutSample:
    """One sampled continuation, with the sampled tokens' log-probabilities on both sides."""

    prompt: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    rollout_logprobs: list[float]  # as vLLM returned them
    trainer_logprobs: list[float]  # transformers, teacher-forced, the trainer's dtype
    seed: int | None = None


@dataclass(frozen=True)
class TokenRow:
    """One sampled token, for the list of the most divergent ones."""

    sample: int
    position: int  # index within the continuation
    token: int
    text: str
    context: str  # the text just before it
    rollout_logprob: float
    trainer_logprob: float
    log_ratio: float  # trainer - rollout


@dataclass(repr=False)
class Rollout(Shown):
    """`Session.rollout()`: the engine's samples, the trainer's view of them, the mismatch statistics
    for the judged engine and for the noise floor (paths right by construction), and a verdict."""

    model: str
    dtype: str  # the engine's
    trainer_dtype: str
    settings: dict[str, Any] = field(default_factory=dict)  # n, temperature, top_p, top_k, seed, logprobs_mode
    samples: list[RolloutSample] = field(default_factory=list)
    judged: MismatchMetrics | None = None
    floors: list[MismatchMetrics] = field(default_factory=list)
    verdict: Verdict | None = None
    top_tokens: list[TokenRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.verdict.ok

    def to_frame(self):
        """One row per sampled token: both logprobs, the log-ratio (trainer - rollout), the importance
        ratio and |p_trainer - p_rollout|."""
        import math

        rows = []
        for i, s in enumerate(self.samples):
            for j, (tok, r, t) in enumerate(zip(s.token_ids, s.rollout_logprobs, s.trainer_logprobs)):
                rows.append(dict(sample=i, position=j, token=tok, rollout_logprob=r, trainer_logprob=t,
                                 log_ratio=t - r, ratio=math.exp(max(min(t - r, 20.0), -20.0)),
                                 abs_prob_diff=abs(math.exp(t) - math.exp(r))))
        return frame(rows)

    def metrics_frame(self):
        """One row per path: the judged engine, then the floors."""
        rows = [dict(role="judged", **self.judged.summary())] if self.judged else []
        rows += [dict(role="noise floor", **f.summary()) for f in self.floors]
        return frame(rows)

    def to_dict(self) -> dict[str, Any]:
        return plain({"model": self.model, "dtype": self.dtype, "trainer_dtype": self.trainer_dtype,
                      "settings": self.settings, "samples": self.samples, "judged": self.judged,
                      "floors": self.floors, "verdict": self.verdict, "top_tokens": self.top_tokens,
                      "notes": self.notes, "seconds": self.seconds})

    def plot(self, kind: str = "ratio", ax=None):
        """kind="ratio": importance-ratio histogram on a log axis with RL's bands; "position": |log-ratio|
        by position in the continuation."""
        from hfvllm_lab import display

        return display.plot(self, kind=kind, ax=ax)
