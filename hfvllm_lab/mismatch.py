"""Training–inference mismatch statistics, as RL frameworks log them for vLLM rollouts.

Inputs are, per sampled sequence, each sampled token's log-probability under the rollout engine
(what vLLM returned) and under the trainer (transformers, teacher-forced on the same tokens). Names
and formulas follow verl's rollout correction (`rollout_corr/*`, `training/rollout_probs_diff_*`):
the log-ratio is lr = log p_trainer - log p_rollout and the importance ratio exp(lr);
`kl` is the k1 estimator mean(log p_rollout - log p_trainer) (verl's sign), `k3_kl` is
mean(exp(lr) - lr - 1); perplexities are per-sequence then averaged; `chi2_seq` uses the product of
token ratios (verl, TRL; ms-swift takes the geometric mean). The sequence weights' effective sample
size is normalised to (0, 1]: (sum w)^2 / (N sum w^2), w = exp(clamp(sum_t lr, +-20)).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hfvllm_lab.rules import RATIO_BANDS

if TYPE_CHECKING:
    from hfvllm_lab.results.rollout import MismatchMetrics

CLAMP = 20.0  # log-ratio clamp before exponentiating, as verl does


def mismatch_metrics(path: str, against: str, rollout: list[list[float]],
                     trainer: list[list[float]]) -> "MismatchMetrics":
    """Token- and sequence-level statistics of one rollout path against the trainer."""
    import torch

    from hfvllm_lab.results.rollout import MismatchMetrics

    if len(rollout) != len(trainer) or any(len(r) != len(t) for r, t in zip(rollout, trainer)):
        raise ValueError("rollout and trainer log-probabilities must cover the same tokens")
    seqs = [(torch.tensor(r, dtype=torch.float64), torch.tensor(t, dtype=torch.float64))
            for r, t in zip(rollout, trainer) if len(r)]
    if not seqs:
        raise ValueError("no sampled tokens to compare")
    lr_seq = [t - r for r, t in seqs]
    lr = torch.cat(lr_seq)
    r_all, t_all = torch.cat([r for r, _ in seqs]), torch.cat([t for _, t in seqs])
    clamped = lr.clamp(-CLAMP, CLAMP)
    ratio = clamped.exp()
    abs_lr = lr.abs()
    probs_diff = (t_all.exp() - r_all.exp()).abs()
    seq_sum = torch.stack([x.sum() for x in lr_seq])
    seq_mean_t = torch.stack([t.mean() for _, t in seqs])
    seq_mean_r = torch.stack([r.mean() for r, _ in seqs])
    d = seq_mean_r - seq_mean_t  # per-sequence log-perplexity difference, verl's sign
    w = seq_sum.clamp(-CLAMP, CLAMP).exp()
    return MismatchMetrics(
        path=path, against=against, tokens=int(lr.numel()), sequences=len(seqs),
        mean_abs_log_ratio=float(abs_lr.mean()), p99_abs_log_ratio=float(abs_lr.quantile(0.99)),
        max_abs_log_ratio=float(abs_lr.max()),
        kl=float((r_all - t_all).mean()), k3_kl=float((ratio - clamped - 1).mean()),
        training_ppl=float((-seq_mean_t).exp().mean()), rollout_ppl=float((-seq_mean_r).exp().mean()),
        log_ppl_diff=float(d.mean()), log_ppl_abs_diff=float(d.abs().mean()),
        chi2_token=float((ratio ** 2).mean() - 1), chi2_seq=float((2 * seq_sum.clamp(-CLAMP, CLAMP)).exp().mean() - 1),
        outside_bands=outside_band_shares(lr.tolist()),
        seq_log_ratio_mean=float(seq_sum.mean()),
        seq_log_ratio_std=float(seq_sum.std()) if len(seqs) > 1 else 0.0,
        seq_ess=float(w.sum() ** 2 / (len(seqs) * (w ** 2).sum())),
        probs_diff_max=float(probs_diff.max()), probs_diff_mean=float(probs_diff.mean()),
        probs_diff_std=float(probs_diff.std()) if probs_diff.numel() > 1 else 0.0,
        log_ratios=[x.tolist() for x in lr_seq],
    )


def outside_band_shares(log_ratios: list[float]) -> dict[str, float]:
    """Share of tokens whose importance ratio lies outside each of RATIO_BANDS."""
    if not log_ratios:
        return {f"outside_{lo:g}_{hi:g}": 0.0 for lo, hi in RATIO_BANDS}
    out = {}
    for lo, hi in RATIO_BANDS:
        a, b = math.log(lo), math.log(hi)
        out[f"outside_{lo:g}_{hi:g}"] = sum(1 for x in log_ratios if x < a or x > b) / len(log_ratios)
    return out


__all__ = ["mismatch_metrics", "outside_band_shares"]
