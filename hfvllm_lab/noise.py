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
from hfvllm_lab.results.teacher import DistributionDiff, Verdict

if TYPE_CHECKING:
    import torch

# The rule, picked from measurements on SmolLM2-135M-Instruct in bfloat16 on the CPU (README,
# "Verdicts in reduced precision"): a correct port lands at 0.8-1.6x the larger floor on KL mean
# and p99; the smallest injected defect we measured (every input RMSNorm epsilon set to 1e-3)
# lands at 4x and above. 2.5x splits the two with room on both sides.
NOISE_FACTOR = 2.5
# Bisect: a module is past the noise when its relative error against float32 exceeds this multiple
# of transformers' own rounding error at the same module (plus a small absolute part for modules
# whose rounding error is ~0, such as embeddings). Measured on SmolLM2-135M bf16 (CPU): the clean
# lab path sits at 1.0x at every module; a post-attention norm weight x1.05 shows 3.8x at that
# module (and 5x at the MLP after it); 4x missed it, 2x names it.
MODULE_NOISE_FACTOR = 2.0
MODULE_NOISE_ABS = 1e-3
# float32 keeps the strict bound of the free-running rule.
FLOAT32_LOGPROB_TOLERANCE = 1e-3


def kl_per_position(truth: "torch.Tensor", path: "torch.Tensor") -> "torch.Tensor":
    """KL(truth || path) for each row of two [positions, vocab] log-probability tensors."""
    truth, path = truth.double(), path.double()
    return (truth.exp() * (truth - path)).sum(-1).clamp_min(0.0)


def distribution_diff(name: str, against: str, truths: list["torch.Tensor"], paths: list["torch.Tensor"],
                      sequences: list[list[int]]) -> DistributionDiff:
    """One path against the truth over all prompts. Row i of each tensor predicts token i + 1 of
    its sequence; the last row (no target) is left out."""
    import torch

    kls: list[list[float]] = []
    agree = total = 0
    target_diff = 0.0
    for truth, path, seq in zip(truths, paths, sequences):
        n = len(seq) - 1
        if truth.shape[0] < n or path.shape[0] < n or truth.shape[-1] != path.shape[-1]:
            raise ValueError(f"{name}: scores of shape {tuple(path.shape)} / {tuple(truth.shape)} do not cover a "
                             f"sequence of {len(seq)} tokens")
        t, p = truth[:n].float(), path[:n].float()
        kls.append(kl_per_position(t, p).tolist())
        agree += int((t.argmax(-1) == p.argmax(-1)).sum())
        total += n
        targets = torch.tensor(seq[1:], dtype=torch.long)
        idx = targets.unsqueeze(-1)
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


def noise_verdict(judged: DistributionDiff, floors: list[DistributionDiff], dtype: str,
                  token_ids_agree: bool = True) -> Verdict:
    """float32: the strict logprob bound. Reduced precision: within NOISE_FACTOR x the larger floor
    on KL mean and KL p99."""
    if not token_ids_agree:
        return Verdict("tokenization differs", None, "prompt token ids must be identical on both paths",
                       "the paths were given different prompt token ids; nothing else can be compared")
    if dtype == "float32":
        ok = judged.max_target_logprob_diff <= FLOAT32_LOGPROB_TOLERANCE
        rule = f"float32: teacher-forced |dlogp| of every target token <= {FLOAT32_LOGPROB_TOLERANCE:g}"
        reason = f"max |dlogp| {judged.max_target_logprob_diff:.3g}, KL max {judged.kl_max:.3g}"
        return Verdict("pass" if ok else "fail", None, rule, reason)
    if not floors:
        return Verdict("fail", None, "no noise floor was measured",
                       f"{dtype} needs a measured noise floor (compare(noise_floor=True))")
    mean_floor = max(f.kl_mean for f in floors)
    p99_floor = max(f.kl_p99 for f in floors)
    ratio = max(_ratio(judged.kl_mean, mean_floor), _ratio(judged.kl_p99, p99_floor))
    rule = (f"{dtype}: KL mean and KL p99 against transformers float32 within {NOISE_FACTOR:g}x the larger of "
            f"the floors ({', '.join(f.path for f in floors)})")
    reason = (f"KL mean {judged.kl_mean:.3g} vs floor {mean_floor:.3g}, p99 {judged.kl_p99:.3g} vs floor "
              f"{p99_floor:.3g}; top-1 {judged.top1_agreement:.1%} (floors "
              f"{', '.join(f'{f.top1_agreement:.1%}' for f in floors)})")
    if ratio <= NOISE_FACTOR:
        return Verdict("within noise", ratio, rule, reason)
    return Verdict("beyond noise", ratio, rule, f"beyond noise by {ratio:.1f}x: {reason}")


def _ratio(value: float, floor: float) -> float:
    return value / max(floor, 1e-9)


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
