"""Engine runs beyond greedy generation, as users receive them: decoding forced along given token
sequences, and sampled rollouts, with each sampling step's full distribution captured
(probes/decode.py). Every run goes through the engine's scheduler, KV cache and decode steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hfvllm_lab.errors import InputError, ProbeUnavailableError
from hfvllm_lab.paths.vllm_path import VllmPath
from hfvllm_lab.probes.payloads import DECODE_EXTRA_KEY

# How a batch of sequences meets the engine: all submitted together, in order or reversed, or each
# alone (one request in the engine at a time).
COMPOSITIONS = ("batch", "reversed", "alone")


@dataclass
class Sample:
    """One sampled continuation as the engine returned it."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]  # each sampled token's logprob as vLLM returned it (its logprobs_mode)
    seed: int | None = None
    finish_reason: str = ""


@dataclass
class SampledRun:
    samples: list[Sample] = field(default_factory=list)
    distributions: list = field(default_factory=list)  # per sample [steps, vocab] raw log-probs, if captured
    seconds: float = 0.0
    seeding: str = ""  # how the run was seeded, and why


def _params(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def _probe_args(key: str, capture: bool, force: list[int] | None = None) -> dict:
    args = {"key": key, "capture": capture}
    if force is not None:
        args["force"] = list(force)
    return {DECODE_EXTRA_KEY: args}


@dataclass
class ForcedRun:
    """Per sequence the [continuation, vocab] log-probabilities the engine sampled from (row 0 from
    the prefill's last position, then one row per decode step); the engine's wall seconds; per
    sequence the prompt tokens vLLM served from its prefix cache."""

    rows: list
    seconds: float
    cached_tokens: list[int]


def forced_decode(path: VllmPath, sequences: list[list[int]], prompt_lengths: list[int], *,
                  composition: str = "batch") -> ForcedRun:
    """Prefill each sequence's prompt, then decode its continuation token by token with the engine's
    choice forced to the sequence's own next token."""
    if composition not in COMPOSITIONS:
        raise InputError(f"composition must be one of {', '.join(COMPOSITIONS)}, got {composition!r}")
    if any(len(seq) <= n or n < 1 for seq, n in zip(sequences, prompt_lengths)):
        raise InputError("each sequence needs a prompt and at least one continuation token")
    keys = [f"forced-{i}" for i in range(len(sequences))]
    params = [_params(max_tokens=len(seq) - n, temperature=0.0, ignore_eos=True,
                      extra_args=_probe_args(key, True, seq[n:]))
              for key, seq, n in zip(keys, sequences, prompt_lengths)]
    prompts = [seq[:n] for seq, n in zip(sequences, prompt_lengths)]
    order = list(range(len(sequences)))
    if composition == "reversed":
        order.reverse()
    path.rpc("lab_decode_reset")
    begin = time.perf_counter()
    if composition == "alone":
        outputs = {i: path.run([prompts[i]], params[i])[0] for i in order}
    else:
        outputs = dict(zip(order, path.run([prompts[i] for i in order], [params[i] for i in order])))
    seconds = time.perf_counter() - begin
    captured = path.rpc("lab_decode_take")
    result = []
    for i, (key, seq, n) in enumerate(zip(keys, sequences, prompt_lengths)):
        tokens = list(outputs[i].outputs[0].token_ids)
        if tokens != seq[n:]:
            raise ProbeUnavailableError(f"forced decoding of sequence {i} produced {tokens[:8]}..., not its own tokens")
        rows = captured.get(key)
        if rows is None or rows.shape[0] != len(seq) - n:
            raise ProbeUnavailableError(f"the decode probe captured {None if rows is None else rows.shape[0]} steps of "
                                        f"sequence {i}, expected {len(seq) - n}")
        result.append(rows)
    cached = [int(getattr(outputs[i], "num_cached_tokens", 0) or 0) for i in range(len(sequences))]
    return ForcedRun(result, seconds, cached)


def sample(path: VllmPath, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float,
           top_p: float, top_k: int, seed: int | None, capture: bool = False, ignore_eos: bool = False,
           logprobs_mode: str = "raw") -> SampledRun:
    """`n` samples per prompt, as separate requests (sample k of prompt i seeded `seed + i*n + k`), with
    each sampled token's logprob as vLLM returns it in `logprobs_mode` (sampling.LOGPROBS_MODES), which
    is set on the live sampler for this run and given back afterwards."""
    from hfvllm_lab.sampling import LOGPROBS_MODES

    if logprobs_mode not in LOGPROBS_MODES:
        raise InputError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got {logprobs_mode!r}")
    previous = path.rpc("lab_set_logprobs_mode", LOGPROBS_MODES[logprobs_mode])
    try:
        run = _sample(path, prompts, n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                      top_k=top_k, seed=seed, capture=capture, ignore_eos=ignore_eos)
    finally:
        path.rpc("lab_set_logprobs_mode", previous)
    if LOGPROBS_MODES[logprobs_mode] != previous:
        run.seeding += f"; logprobs_mode {LOGPROBS_MODES[logprobs_mode]} set on the live sampler for this run"
    return run


def _sample(path: VllmPath, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float,
            top_p: float, top_k: int, seed: int | None, capture: bool, ignore_eos: bool) -> SampledRun:
    budget = path.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    per_request = seed is not None and sum(len(p) for p in prompts) * n <= budget
    run = SampledRun()
    if seed is None:
        run.seeding = "unseeded"
    elif per_request:
        run.seeding = f"per request: sample k of prompt i uses seed {seed} + i*{n} + k"
    else:
        # vLLM 0.32's CPU runner fails a seeded request whose prefill is split over steps (its CPU
        # generator has no offset to rewind), so long prompts draw from the engine's RNG seeded once.
        path.rpc("lab_seed", seed)  # where the sampler runs: this process, or the last stage's worker
        run.seeding = (f"engine RNG seeded once with {seed}: the prompts ({sum(len(p) for p in prompts) * n} tokens) "
                       f"exceed one step's budget ({budget}), and vLLM's CPU runner cannot rewind a per-request seed "
                       "over a split prefill")
    requests, params, seeds = [], [], []
    for i, prompt in enumerate(prompts):
        for k in range(n):
            s = seed + i * n + k if per_request else None
            seeds.append(s)
            requests.append(prompt)
            params.append(_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                  seed=s, logprobs=0, ignore_eos=ignore_eos,
                                  extra_args=_probe_args(f"sample-{len(params)}", capture) if capture else None))
    if capture:
        path.rpc("lab_decode_reset")
    begin = time.perf_counter()
    outputs = path.run(requests, params)
    run.seconds = time.perf_counter() - begin
    captured = path.rpc("lab_decode_take") if capture else {}
    for j, (out, s) in enumerate(zip(outputs, seeds)):
        done = out.outputs[0]
        tokens = list(done.token_ids)
        logprobs = [step[t].logprob for step, t in zip(done.logprobs or [], tokens)]
        run.samples.append(Sample(list(out.prompt_token_ids), tokens, logprobs, s, str(done.finish_reason or "")))
        if capture:
            run.distributions.append(captured[f"sample-{j}"][: len(tokens)])
    return run


__all__ = ["COMPOSITIONS", "ForcedRun", "Sample", "SampledRun", "forced_decode", "sample"]
