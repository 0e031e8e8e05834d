"""Parity of two generations: vLLM's own token rule (equal greedy tokens, or at the first
differing step each token in the other's top-k with a small logprob gap), plus a logprob bound,
because a dropped constant logit scale leaves every argmax, and so every token, unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from hfvllm_lab.results.generation import Generation
from hfvllm_lab.rules import LOGPROB_TOLERANCE, PARITY_MAX_GAP, PARITY_TOP_K  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class TokenParity:
    """Verdict for one prompt."""

    ok: bool
    first_divergence: int | None  # step index, None when all tokens match
    reason: str
    max_prompt_logprob_diff: float | None


def step_logprob_diffs(a: Generation, b: Generation) -> list[float | None]:
    """Per step: |logprob a - logprob b| of the token both chose; None from the first divergence."""
    diffs: list[float | None] = []
    diverged = False
    for step, (ta, tb) in enumerate(zip(a.token_ids, b.token_ids)):
        diverged = diverged or ta != tb
        diffs.append(None if diverged else abs(a.top_logprobs[step][ta] - b.top_logprobs[step][tb]))
    return diffs


def compare_generations(a: Generation, b: Generation, top_k: int = PARITY_TOP_K, max_gap: float = PARITY_MAX_GAP,
                        logprob_tol: float | None = None) -> TokenParity:
    prompt_diff = max_prompt_logprob_diff(a, b)
    verdict = _token_verdict(a, b, top_k, max_gap, prompt_diff)
    if not verdict.ok or logprob_tol is None:
        return verdict
    worst = max([d for d in step_logprob_diffs(a, b) if d is not None] + [prompt_diff or 0.0])
    if worst > logprob_tol:
        return TokenParity(False, verdict.first_divergence,
                           f"{verdict.reason}, but logprobs differ by up to {worst:.3g} > {logprob_tol:g}", prompt_diff)
    return verdict


def _token_verdict(a: Generation, b: Generation, top_k: int, max_gap: float, prompt_diff) -> TokenParity:
    for step, (ta, tb) in enumerate(zip(a.token_ids, b.token_ids)):
        if ta == tb:
            continue
        la, lb = a.top_logprobs[step], b.top_logprobs[step]
        margin = f"; reference top-2 margin {reference_margin(la):.3g}"
        if ta not in lb or tb not in la:
            return TokenParity(False, step, f"step {step}: {ta} vs {tb}, not in each other's top-{top_k}{margin}",
                               prompt_diff)
        gap = max(abs(la[ta] - la[tb]), abs(lb[ta] - lb[tb]))
        if gap >= max_gap:
            return TokenParity(False, step, f"step {step}: {ta} vs {tb}, logprob gap {gap:.3g} >= {max_gap}{margin}",
                               prompt_diff)
        return TokenParity(True, step, f"step {step}: near-tie {ta} vs {tb} (gap {gap:.3g}{margin})", prompt_diff)
    if len(a.token_ids) != len(b.token_ids):
        return TokenParity(False, min(len(a.token_ids), len(b.token_ids)), "different lengths", prompt_diff)
    return TokenParity(True, None, "identical tokens", prompt_diff)


def reference_margin(top: dict[int, float]) -> float:
    """Logprob of the reference's best token minus its second best: how near a tie the step was."""
    best = sorted(top.values(), reverse=True)
    return best[0] - best[1] if len(best) > 1 else float("inf")


def max_prompt_logprob_diff(a: Generation, b: Generation) -> float | None:
    pairs = [(x, y) for x, y in zip(a.prompt_logprobs, b.prompt_logprobs) if x is not None and y is not None]
    return max((abs(x - y) for x, y in pairs), default=None)
