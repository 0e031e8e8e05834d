"""Teacher-forced distribution differences and verdicts relative to a measured noise floor.

Every path scores the same token sequences (each prompt + the reference's greedy continuation);
each path's next-token distributions are compared with those of the truth, transformers in
float32, position by position. In reduced precision the lab path is judged against what the
same dtype costs paths that are right by construction (transformers itself, vLLM's native class):
a free-running divergence at a near-tie proves nothing, a KL well above that floor does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfvllm_lab.results.comparison import ModuleDiff
from hfvllm_lab.results.teacher import DistributionDiff

# The thresholds and the verdict rule live with every other rule in hfvllm_lab.rules.
from hfvllm_lab.rules import MODULE_NOISE_ABS, MODULE_NOISE_FACTOR, NOISE_FACTOR, noise_verdict  # noqa: F401

if TYPE_CHECKING:
    import torch


def kl_per_position(truth: "torch.Tensor", path: "torch.Tensor") -> "torch.Tensor":
    """KL(truth || path) for each row of two [positions, vocab] log-probability tensors."""
    truth, path = truth.double(), path.double()
    return (truth.exp() * (truth - path)).sum(-1).clamp_min(0.0)


def next_tokens(sequences: list[list[int]]) -> list[list[int]]:
    """Targets of teacher forcing over whole sequences: row i predicts token i + 1."""
    return [list(seq[1:]) for seq in sequences]


def distribution_diff(name: str, against: str, truths: list["torch.Tensor"], paths: list["torch.Tensor"],
                      targets: list[list[int]]) -> DistributionDiff:
    """One path against the truth over all sequences. Row i of each pair of [rows, vocab] tensors
    predicts `targets[s][i]` (the token the sequence really has there); rows beyond the targets are
    left out (the last position of a whole sequence has none)."""
    import torch

    kls: list[list[float]] = []
    agree = total = 0
    target_diff = 0.0
    for truth, path, want in zip(truths, paths, targets):
        n = len(want)
        if truth.shape[0] < n or path.shape[0] < n or truth.shape[-1] != path.shape[-1]:
            raise ValueError(f"{name}: scores of shape {tuple(path.shape)} / {tuple(truth.shape)} do not cover "
                             f"{n} target tokens")
        t, p = truth[:n].float(), path[:n].float()
        kls.append(kl_per_position(t, p).tolist())
        agree += int((t.argmax(-1) == p.argmax(-1)).sum())
        total += n
        if n:
            idx = torch.tensor(want, dtype=torch.long).unsqueeze(-1)
            target_diff = max(target_diff, float((t.gather(-1, idx) - p.gather(-1, idx)).abs().max()))
    flat = torch.tensor([k for row in kls for k in row], dtype=torch.float64)
    return DistributionDiff(
        path=name, against=against, positions=total,
        kl_mean=float(flat.mean()) if total else 0.0,
        kl_p99=float(flat.quantile(0.99)) if total else 0.0,
        kl_max=float(flat.max()) if total else 0.0,
        top1_agreement=agree / total if total else 1.0,
        max_target_logprob_diff=target_diff,
        kl_per_position=kls,
    )


def relative_rms(value: "torch.Tensor", truth: "torch.Tensor") -> float:
    """Per token, the RMS of the error over the RMS of the truth; averaged over tokens. Per token,
    because a few massive activations (the first token's residual stream in many trained models)
    would otherwise set the scale for every token and hide their errors."""
    value, truth = value.float().reshape(value.shape[0], -1), truth.float().reshape(truth.shape[0], -1)
    err = (value - truth).pow(2).mean(-1).sqrt()
    scale = truth.pow(2).mean(-1).sqrt()
    return float((err / scale.clamp_min(1e-6)).mean())


def module_noise(name: str, judged: "torch.Tensor", reference: "torch.Tensor", truth: "torch.Tensor") -> ModuleDiff:
    """One module's error against float32, beside transformers' own error in the same dtype."""
    err = relative_rms(judged, truth)
    floor = relative_rms(reference, truth)
    limit = MODULE_NOISE_FACTOR * floor + MODULE_NOISE_ABS
    return ModuleDiff(name, float((judged.float() - truth.float()).abs().max()), err <= limit, err, floor)
