"""Every rule that turns measured numbers into a verdict, in one place.

- Free-running parity (vLLM's token rule plus logprob bounds): PARITY_TOP_K, PARITY_MAX_GAP,
  LOGPROB_TOLERANCE, applied by `parity.py`.
- Teacher-forced distributions against transformers in float32, prefill and decode alike:
  `noise_verdict` (float32: a strict |dlogp| bound; reduced precision: within NOISE_FACTOR x the
  measured noise floor); `worse_of` joins the prefill and decode verdicts.
- Bisect: a module is past the noise at MODULE_NOISE_FACTOR x transformers' own rounding there
  (`noise.module_noise`); `with_module_caveat` makes a "within noise" verdict say when bisect found
  a module beyond its own noise.
- Rollout mismatch (what an RL trainer sees): `rollout_verdict` on mean |log-ratio| and k3 KL
  against the same statistics of paths right by construction; RATIO_BANDS are the importance-
  ratio bands RL frameworks truncate or mask at.
- Diagnose lenses: `lens_status` (which factor causes a mismatch, which flip removes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plain thresholds above all; results are built by the functions below
    from hfvllm_lab.results.teacher import DistributionDiff, Verdict

# -- free-running parity -----------------------------------------------------------------------
PARITY_TOP_K = 5  # vLLM's own test rule: at the first differing step each token in the other's top-k
PARITY_MAX_GAP = 0.05  # ... with a logprob gap below this
# Logprob bound by dtype: float32 paths agree to ~1e-5 here; half precision rounds every layer.
LOGPROB_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.1}

# -- teacher-forced distributions ------------------------------------------------------------------
# Picked from measurements on SmolLM2-135M-Instruct in bfloat16 on the CPU (README, "Verdicts in
# reduced precision"): a correct port lands at 0.8-1.6x the larger floor on KL mean and p99; the
# smallest injected defect we measured (every input RMSNorm epsilon set to 1e-3) lands at 4x and
# above. 2.5x splits the two with room on both sides.
NOISE_FACTOR = 2.5
# float32 keeps the strict bound of the free-running rule.
FLOAT32_LOGPROB_TOLERANCE = 1e-3

# -- bisect ----------------------------------------------------------------------------------------
# A module is past the noise when its relative error against float32 exceeds this multiple of
# transformers' own rounding error at the same module (plus a small absolute part for modules whose
# rounding error is ~0, such as embeddings). Measured on SmolLM2-135M bf16 (CPU): the clean lab path
# sits at 1.0x at every module; a post-attention norm weight x1.05 shows 3.8x at that module.
MODULE_NOISE_FACTOR = 2.0
MODULE_NOISE_ABS = 1e-3

# -- rollout mismatch ------------------------------------------------------------------------------
# Importance-ratio bands p_trainer / p_rollout that RL frameworks truncate or mask at (verl's
# rollout correction, TRL's vLLM importance sampling): the share of tokens outside each is reported.
RATIO_BANDS = ((0.5, 2.0), (0.2, 5.0))
# float32 rollouts against a float32 trainer: every token's |log-ratio| within this.
FLOAT32_LOG_RATIO_TOLERANCE = 1e-3

def noise_verdict(judged: DistributionDiff, floors: Sequence[DistributionDiff], dtype: str,
                  token_ids_agree: bool = True) -> Verdict:
    """float32: the strict logprob bound. Reduced precision: within NOISE_FACTOR x the larger floor
    on KL mean and KL p99."""
    if not token_ids_agree:
        return _verdict("tokenization differs", None, "prompt token ids must be identical on both paths",
                       "the paths were given different prompt token ids; nothing else can be compared")
    if dtype == "float32":
        ok = judged.max_target_logprob_diff <= FLOAT32_LOGPROB_TOLERANCE
        rule = f"float32: |dlogp| of every target token against transformers float32 <= {FLOAT32_LOGPROB_TOLERANCE:g}"
        reason = f"max |dlogp| {judged.max_target_logprob_diff:.3g}, KL max {judged.kl_max:.3g}"
        return _verdict("pass" if ok else "fail", None, rule, reason)
    if not floors:
        return _verdict("fail", None, "no noise floor was measured",
                       f"{dtype} needs a measured noise floor: compare() measures transformers in {dtype} against "
                       "float32 (and vLLM native with native_floor=True)")
    mean_floor = max(f.kl_mean for f in floors)
    p99_floor = max(f.kl_p99 for f in floors)
    ratio = max(_ratio(judged.kl_mean, mean_floor), _ratio(judged.kl_p99, p99_floor))
    rule = (f"{dtype}: KL mean and KL p99 against transformers float32 within {NOISE_FACTOR:g}x the larger of "
            f"the floors ({', '.join(f.path for f in floors)})")
    reason = (f"KL mean {judged.kl_mean:.3g} vs floor {mean_floor:.3g}, p99 {judged.kl_p99:.3g} vs floor "
              f"{p99_floor:.3g}; top-1 {judged.top1_agreement:.1%} (floors "
              f"{', '.join(f'{f.top1_agreement:.1%}' for f in floors)})")
    if ratio <= NOISE_FACTOR:
        return _verdict("within noise", ratio, rule, reason)
    return _verdict("beyond noise", ratio, rule, f"beyond noise by {ratio:.1f}x: {reason}")


def _verdict(*args, **kwargs) -> Verdict:
    from hfvllm_lab.results.teacher import Verdict

    return Verdict(*args, **kwargs)


def _ratio(value: float, floor: float) -> float:
    return value / max(floor, 1e-9)


def worse_of(parts: Sequence[tuple[str, Verdict]]) -> Verdict:
    """One verdict for several judged parts (prefill, decode): the worst, naming every part."""
    order = {"tokenization differs": 0, "fail": 1, "beyond noise": 1, "pass": 2, "within noise": 2}
    worst_name, worst = min(parts, key=lambda p: (order.get(p[1].status, 1), -(p[1].ratio or 0.0)))
    others = "; ".join(f"{name}: {v.label}" + (f" ({v.ratio:.2g}x)" if v.ratio is not None else f" ({v.reason})")
                       for name, v in parts if name != worst_name)
    reason = f"{worst_name}: {worst.reason}" + (f" | {others}" if others else "")
    return _verdict(worst.status, worst.ratio, worst.rule, reason, part=worst_name)


def with_module_caveat(verdict: Verdict, module: str | None, ratio: float | None) -> Verdict:
    """A verdict that is ok on the outputs but bisect found `module` beyond its own noise."""
    if module is None or not verdict.ok:
        return verdict
    times = f"{ratio:.1f}x its noise" if ratio is not None else "beyond its tolerance"
    caveat = f"outputs {verdict.status}; {module} deviates {times}"
    return _verdict(verdict.status, verdict.ratio, verdict.rule, f"{caveat}; {verdict.reason}", verdict.part, caveat)


def rollout_verdict(judged_mean_abs: float, judged_k3: float, floors: Sequence[tuple[str, float, float]],
                    judged_max_abs: float, dtype: str) -> Verdict:
    """The rollout's token log-ratios against the trainer. float32: every |log-ratio| within
    FLOAT32_LOG_RATIO_TOLERANCE. Reduced precision: mean |log-ratio| and k3 KL within NOISE_FACTOR x
    the larger floor (floors: (name, mean |log-ratio|, k3) of paths right by construction)."""
    if dtype == "float32":
        ok = judged_max_abs <= FLOAT32_LOG_RATIO_TOLERANCE
        return _verdict("pass" if ok else "fail", None,
                       f"float32: every token's |log p_trainer - log p_rollout| <= {FLOAT32_LOG_RATIO_TOLERANCE:g}",
                       f"max |log-ratio| {judged_max_abs:.3g}")
    if not floors:
        return _verdict("fail", None, "no noise floor was measured", "a rollout in reduced precision needs a floor")
    mean_floor = max(f[1] for f in floors)
    k3_floor = max(f[2] for f in floors)
    ratio = max(_ratio(judged_mean_abs, mean_floor), _ratio(judged_k3, k3_floor))
    rule = (f"{dtype}: mean |log-ratio| and k3 KL against the trainer within {NOISE_FACTOR:g}x the larger of the "
            f"floors ({', '.join(f[0] for f in floors)})")
    reason = (f"mean |log-ratio| {judged_mean_abs:.3g} vs floor {mean_floor:.3g}, k3 {judged_k3:.3g} vs floor "
              f"{k3_floor:.3g}")
    if ratio <= NOISE_FACTOR:
        return _verdict("within noise", ratio, rule, reason)
    return _verdict("beyond noise", ratio, rule, f"beyond noise by {ratio:.1f}x: {reason}")


# Lens statuses, in the order a Diagnosis lists them.
LENS_CAUSE, LENS_REMEDY, LENS_EVERY_ARM, LENS_WITHIN, LENS_UNAVAILABLE, LENS_FAILED = (
    "beyond noise", "remedy", "beyond noise in every arm", "within noise", "unavailable", "failed")
LENS_STATUSES = (LENS_CAUSE, LENS_REMEDY, LENS_EVERY_ARM, LENS_WITHIN, LENS_UNAVAILABLE, LENS_FAILED)
# Statuses that say the engine as the Session runs it is beyond noise somewhere.
LENS_MISMATCHED = (LENS_CAUSE, LENS_REMEDY, LENS_EVERY_ARM)


def lens_status(arms: Sequence[tuple[str, Verdict]], settable: bool) -> tuple[str, str]:
    """(status, why) of a lens from its arms' verdicts against the truth. arms[0] is the baseline, the
    others flip one factor. A lens over a property of the workload (decode steps, batches, positions:
    `settable=False`) names its factor whenever its arms disagree. A lens over an engine setting the
    user chooses (arm 0 the Session's own) names the factor when the Session's setting is within noise
    and a flip is not, and calls a flip a remedy when the Session's setting is beyond noise and the flip
    within. Beyond noise in every arm: this factor does not decide it."""
    (base_name, base), flips = arms[0], arms[1:]
    bad = [name for name, v in flips if not v.ok]
    good = [name for name, v in flips if v.ok]
    if base.ok and not bad:
        return LENS_WITHIN, f"every arm within noise ({', '.join(n for n, _ in arms)})"
    if base.ok:
        return LENS_CAUSE, f"{', '.join(bad)} beyond noise while {base_name} is within"
    if good and not settable:
        return LENS_CAUSE, f"{base_name} beyond noise while {', '.join(good)} within: the factor decides it"
    if good:
        return LENS_REMEDY, f"{base_name} beyond noise; {', '.join(good)} within: the flip removes the mismatch"
    return LENS_EVERY_ARM, "beyond noise in every arm: not caused by this factor"


__all__ = [
    "FLOAT32_LOGPROB_TOLERANCE", "LENS_MISMATCHED", "LENS_STATUSES", "LOGPROB_TOLERANCE", "MODULE_NOISE_ABS", "MODULE_NOISE_FACTOR",
    "NOISE_FACTOR", "PARITY_MAX_GAP", "PARITY_TOP_K", "RATIO_BANDS", "lens_status", "noise_verdict",
    "rollout_verdict", "with_module_caveat", "worse_of",
]
