"""Transformers scoring token sequences the ways the judgements need, as one call returning plain data.

A pass is (dtype, mode): "teacher" runs each whole sequence in one forward (what a trainer computes
for a rollout), "decode" feeds the continuation one token at a time through transformers' own KV cache
(what a transformers rollout engine would compute). Each pass gives, per sequence, the continuation's
rows (row j predicts continuation token j), or only the continuation tokens' log-probabilities, after
an optional sampling transform (processed logprobs). It runs in this process, or in a spawned child
where vLLM's built-in backend has patched transformers' classes here (`paths/hf_side.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hfvllm_lab.sampling import SamplingTransform

MODES = ("teacher", "decode")


@dataclass(frozen=True)
class ScorePass:
    dtype: str
    mode: str  # one of MODES

    @property
    def label(self) -> str:
        return f"transformers ({self.dtype}, {'teacher-forced' if self.mode == 'teacher' else 'decode'})"


@dataclass(frozen=True)
class HfScoreRequest:
    model_dir: Path
    device: str
    attention: str
    sequences: list[list[int]]
    prompt_lengths: list[int]
    passes: tuple[ScorePass, ...]
    trust_remote_code: bool = False
    tokens_only: bool = False  # True: each continuation token's log-probability, not whole rows
    transform: SamplingTransform | None = None  # applied before picking tokens (processed logprobs)


@dataclass
class HfScoreResult:
    outputs: dict[ScorePass, list] = field(default_factory=dict)  # rows [cont, vocab] or token lists
    seconds: dict[ScorePass, float] = field(default_factory=dict)
    attention: str = ""


def continuation_rows(scores, prompt_length: int, length: int):
    """Rows of a whole-sequence score that predict the continuation tokens."""
    return scores[prompt_length - 1: length - 1]


def decode_step_rows(rows: list) -> list:
    """Per sequence, the continuation rows produced by decode steps: row 0 came from the prefill."""
    return [r[1:] for r in rows]


def run_hf_scoring(req: HfScoreRequest) -> HfScoreResult:
    import time

    from hfvllm_lab.paths.hf_path import HfPath

    result = HfScoreResult()
    for dtype in dict.fromkeys(p.dtype for p in req.passes):
        path = HfPath(req.model_dir, req.device, dtype, req.attention, req.trust_remote_code)
        result.attention = path.attention
        try:
            for score_pass in (p for p in req.passes if p.dtype == dtype):
                begin = time.perf_counter()
                if score_pass.mode == "teacher":
                    rows = [continuation_rows(s, n, len(q)) for s, n, q in
                            zip(path.score(req.sequences), req.prompt_lengths, req.sequences)]
                else:
                    rows = path.decode_along(req.sequences, req.prompt_lengths)
                result.outputs[score_pass] = [_finish(r, q[n:], req) for r, q, n in
                                              zip(rows, req.sequences, req.prompt_lengths)]
                result.seconds[score_pass] = time.perf_counter() - begin
        finally:
            path.close()
    return result


def _finish(rows, continuation: list[int], req: HfScoreRequest):
    if req.transform is not None and not req.transform.identity:
        rows = req.transform.apply(rows)
    if not req.tokens_only:
        return rows.float()
    return [float(rows[j, t]) for j, t in enumerate(continuation)]


def run_hf_scoring_where_possible(req: HfScoreRequest, isolated: bool) -> HfScoreResult:
    """In this process, or in a spawned child (clean transformers classes) when `isolated`."""
    if not isolated:
        return run_hf_scoring(req)
    from hfvllm_lab.paths.spawn import run_spawned

    return run_spawned(run_hf_scoring, req)


__all__ = ["HfScoreRequest", "HfScoreResult", "MODES", "ScorePass", "continuation_rows", "decode_step_rows",
           "run_hf_scoring",
           "run_hf_scoring_where_possible"]
