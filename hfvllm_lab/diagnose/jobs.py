"""What a diagnose arm runs on an engine: the Session's own, or a fresh one in a child process
(`paths.isolated.run_isolated` calls these module-level functions there)."""

from __future__ import annotations

import time

from hfvllm_lab.paths.engine_runs import forced_decode

SPEED_TOKENS = 32


def decode_arm(path, sequences: list[list[int]], lengths: list[int], composition: str) -> dict:
    run = forced_decode(path, sequences, lengths, composition=composition)
    return {"rows": run.rows, "seconds": run.seconds, "cached": run.cached_tokens}


def prefix_arm(path, sequences: list[list[int]], lengths: list[int]) -> dict:
    """Each sequence on an empty prefix cache (cold), then again at once (its prompt's full blocks
    now cached): the second run reads their KV from the cache instead of computing it."""
    cold, warm, cached_cold, cached_warm = [], [], [], []
    begin = time.perf_counter()
    for seq, n in zip(sequences, lengths):
        path.llm.reset_prefix_cache()
        first = forced_decode(path, [seq], [n], composition="alone")
        second = forced_decode(path, [seq], [n], composition="alone")
        cold.append(first.rows[0])
        warm.append(second.rows[0])
        cached_cold += first.cached_tokens
        cached_warm += second.cached_tokens
    return {"rows": cold, "rows_cached": warm, "cached": cached_cold, "cached_again": cached_warm,
            "seconds": time.perf_counter() - begin}


def speed(path, prompts: list[list[int]], max_tokens: int = SPEED_TOKENS) -> float:
    """Greedy decode tokens/s of one batch of prompts on this engine (after a warm-up step)."""
    path.generate(prompts[:1], 1, prompt_logprobs=False)
    begin = time.perf_counter()
    out = path.generate(prompts, max_tokens, top_k=1, prompt_logprobs=False)
    seconds = time.perf_counter() - begin
    return sum(len(g.token_ids) for g in out) / seconds if seconds > 0 else 0.0


def child_arm(path, kind: str, sequences: list[list[int]], lengths: list[int], composition: str,
              speed_prompts: list[list[int]]) -> dict:
    """One arm on a child engine: forced decoding (or the prefix-cache pair), then its decode speed."""
    out = prefix_arm(path, sequences, lengths) if kind == "prefix" else decode_arm(path, sequences, lengths,
                                                                                    composition)
    out["tokens_per_second"] = speed(path, speed_prompts)
    out["model_class"] = path.rpc("lab_model_class")
    return out


__all__ = ["child_arm", "decode_arm", "prefix_arm", "speed"]
