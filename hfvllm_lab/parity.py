"""Parity of two generations by vLLM's own convention: equal greedy tokens, or at the first
differing step each token in the other's top-k with a small logprob gap."""

from __future__ import annotations

from dataclasses import dataclass

from hfvllm_lab.results.generation import Generation


@dataclass(frozen=True)
class TokenParity:
    """Verdict for one prompt."""

    ok: bool
    first_divergence: int | None  # step index, None when all tokens match
    reason: str
    max_prompt_logprob_diff: float | None


def compare_generations(a: Generation, b: Generation, top_k: int = 5, max_gap: float = 0.05) -> TokenParity:
    prompt_diff = max_prompt_logprob_diff(a, b)
    for step, (ta, tb) in enumerate(zip(a.token_ids, b.token_ids)):
        if ta == tb:
            continue
        la, lb = a.top_logprobs[step], b.top_logprobs[step]
        if ta not in lb or tb not in la:
            return TokenParity(False, step, f"step {step}: {ta} vs {tb}, not in each other's top-{top_k}", prompt_diff)
        gap = max(abs(la[ta] - la[tb]), abs(lb[ta] - lb[tb]))
        if gap >= max_gap:
            return TokenParity(False, step, f"step {step}: {ta} vs {tb}, logprob gap {gap:.3g} >= {max_gap}", prompt_diff)
        return TokenParity(True, step, f"step {step}: near-tie {ta} vs {tb} (gap {gap:.3g})", prompt_diff)
    if len(a.token_ids) != len(b.token_ids):
        return TokenParity(False, min(len(a.token_ids), len(b.token_ids)), "different lengths", prompt_diff)
    return TokenParity(True, None, "identical tokens", prompt_diff)


def max_prompt_logprob_diff(a: Generation, b: Generation) -> float | None:
    pairs = [(x, y) for x, y in zip(a.prompt_logprobs, b.prompt_logprobs) if x is not None and y is not None]
    return max((abs(x - y) for x, y in pairs), default=None)
