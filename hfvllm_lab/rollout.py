"""`Session.rollout()`: the training–inference mismatch of RL, measured on the Session's engine.

The engine samples continuations (as an RL rollout does: temperature, top-p/top-k, seeds), returning
each sampled token's logprob in its logprobs_mode. The trainer — transformers in the trainer's dtype,
teacher-forced on the same tokens, its distribution transformed like vLLM's under processed logprobs —
scores the same tokens. The per-token log-ratios are summarised as RL frameworks log them
(`mismatch.py`) and judged against paths right by construction, on the same tokens:
transformers decoding in the session's dtype against the trainer and against float32 (what the dtype
alone costs), and vLLM native decoding them in a child process.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from hfvllm_lab.assemble import BACKEND_LABELS
from hfvllm_lab.compare import beside_engine
from hfvllm_lab.device import resolve_dtype
from hfvllm_lab.errors import InputError
from hfvllm_lab.mismatch import mismatch_metrics
from hfvllm_lab.paths.hf_scoring import HfScoreRequest, ScorePass, run_hf_scoring_where_possible
from hfvllm_lab.results.rollout import Rollout, RolloutSample, TokenRow
from hfvllm_lab.rules import rollout_verdict
from hfvllm_lab.sampling import LOGPROBS_MODES, SamplingTransform

if TYPE_CHECKING:
    from hfvllm_lab.session import Session

TOP_TOKENS = 10
CONTEXT_TOKENS = 8


def run_rollout(session: "Session", prompts: list[str], *, n: int, max_tokens: int, temperature: float,
                top_p: float, top_k: int, seed: int | None, logprobs_mode: str, trainer_dtype: str | None,
                native_floor: bool | None, progress=None) -> Rollout:
    report = progress or (lambda done, total, what: None)
    if n < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise InputError("rollout needs n >= 1, temperature >= 0 and 0 < top_p <= 1")
    if logprobs_mode not in LOGPROBS_MODES:
        raise InputError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got {logprobs_mode!r}")
    trainer_dtype = resolve_dtype(trainer_dtype or session.dtype, session.device)
    begin = time.perf_counter()
    report(0, 3, "sampling on the engine")
    run = session.sample(prompts, n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                         seed=seed, logprobs_mode=logprobs_mode)
    kept = [(i, s) for i, s in enumerate(run.samples) if s.token_ids]
    if not kept:
        raise InputError("every sample ended before its first token (EOS): nothing to compare")
    sequences = [s.prompt_token_ids + s.token_ids for _, s in kept]
    lengths = [len(s.prompt_token_ids) for _, s in kept]
    transform = SamplingTransform(temperature, top_k, top_p) if logprobs_mode == "processed" else None
    result = Rollout(session.model_name, session.dtype, trainer_dtype, settings=dict(
        n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
        logprobs_mode=LOGPROBS_MODES[logprobs_mode], seeding=run.seeding, backend=session.backend))
    if len(kept) < len(run.samples):
        result.notes.append(f"{len(run.samples) - len(kept)} sample(s) ended at once (EOS) and hold no token")

    report(1, 3, "transformers: the trainer and the floors")
    passes = [ScorePass(trainer_dtype, "teacher"), ScorePass(session.dtype, "decode")]
    if session.dtype != "float32" and trainer_dtype != "float32":
        passes.append(ScorePass("float32", "teacher"))
    req = HfScoreRequest(session.model_dir, session.device, session.hf_attention, sequences, lengths, tuple(passes),
                         session.trust_remote_code, tokens_only=True, transform=transform)
    hf, residency = beside_engine(session, lambda: run_hf_scoring_where_possible(req, session.hf_in_child_process))
    result.notes.append(f"transformers ran {residency}")
    trainer = hf.outputs[passes[0]]
    mine = hf.outputs[passes[1]]
    trainer_name = f"trainer: transformers ({trainer_dtype}, teacher-forced"
    trainer_name += ", processed like vLLM)" if transform else ")"
    label = f"{BACKEND_LABELS[session.backend]} ({session.dtype})"
    rollout_lps = [s.logprobs for _, s in kept]
    result.judged = mismatch_metrics(label, trainer_name, rollout_lps, trainer)
    result.floors.append(mismatch_metrics(f"transformers ({session.dtype}, KV-cache decode)", trainer_name, mine,
                                          trainer))
    if len(passes) > 2:  # what the session's dtype alone costs (against the trainer above when it is float32)
        result.floors.append(mismatch_metrics(f"transformers ({session.dtype}, KV-cache decode)",
                                              "transformers (float32, teacher-forced)", mine, hf.outputs[passes[2]]))
    report(2, 3, "vLLM native decoding the same tokens")
    native = _native_tokens(session, sequences, lengths, transform, native_floor, result.notes)
    if native is not None:
        result.floors.append(mismatch_metrics(f"vLLM native ({session.dtype}, decode steps)", trainer_name, native,
                                              trainer))
    # the strict float32 rule only when both sides run float32; else the rounding of the narrower side
    judged_dtype = session.dtype if session.dtype != "float32" else trainer_dtype
    result.verdict = rollout_verdict(result.judged.mean_abs_log_ratio, result.judged.k3_kl,
                                     [(f"{f.path} vs {f.against}", f.mean_abs_log_ratio, f.k3_kl)
                                      for f in result.floors],
                                     result.judged.max_abs_log_ratio, judged_dtype)
    result.samples = [RolloutSample(prompts[i // n], s.prompt_token_ids, s.token_ids, "", s.logprobs, t, s.seed)
                      for (i, s), t in zip(kept, trainer)]
    _describe_tokens(session, result)
    report(3, 3, "done")
    result.seconds = time.perf_counter() - begin
    return result


def native_tokens_job(path, sequences: list[list[int]], lengths: list[int], transform: SamplingTransform | None):
    """vLLM native decoding the sampled tokens (forced, batched): each token's log-probability."""
    from hfvllm_lab.paths.engine_runs import forced_decode

    rows = forced_decode(path, sequences, lengths, composition="batch").rows
    out = []
    for r, seq, n in zip(rows, sequences, lengths):
        if transform is not None and not transform.identity:
            r = transform.apply(r)
        out.append([float(r[j, t]) for j, t in enumerate(seq[n:])])
    return out


def _native_tokens(session: "Session", sequences, lengths, transform, wanted: bool | None, notes: list[str]):
    from hfvllm_lab.paths.isolated import native_floor_settings, run_isolated

    settings = native_floor_settings(session.settings, wanted, notes, role="the rollout engine under test")
    if settings is None:
        return None
    return run_isolated(settings, native_tokens_job, sequences, lengths, transform)[0]


def _describe_tokens(session: "Session", result: Rollout) -> None:
    """Sample texts and the most divergent tokens with the text just before them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(session.model_dir, trust_remote_code=session.trust_remote_code)
    result.samples = [replace(s, text=tok.decode(s.token_ids)) for s in result.samples]
    rows = []
    for i, s in enumerate(result.samples):
        for j, (token, r, t) in enumerate(zip(s.token_ids, s.rollout_logprobs, s.trainer_logprobs)):
            rows.append((abs(t - r), i, j, token, r, t))
    rows.sort(reverse=True)
    for _, i, j, token, r, t in rows[:TOP_TOKENS]:
        s = result.samples[i]
        before = (s.prompt_token_ids + s.token_ids)[: len(s.prompt_token_ids) + j][-CONTEXT_TOKENS:]
        result.top_tokens.append(TokenRow(i, j, token, tok.decode([token]), tok.decode(before), r, t, t - r))


__all__ = ["run_rollout", "native_tokens_job"]
