"""Greedy decode tokens per second of a Session on a batch of prompts (shared by the bench scripts)."""

from __future__ import annotations

import time


def decode_tok_s(session, prompts: list[str], max_tokens: int) -> float:
    """One short warm-up generation, then the batch timed end to end."""
    session.generate(prompts[:1], 2)
    begin = time.perf_counter()
    out = session.generate(prompts, max_tokens)
    return sum(len(g.token_ids) for g in out) / (time.perf_counter() - begin)
