"""`Session.compare(reference=...)`: the Session's model against another checkpoint with the same
tokenizer (a quantized model against its original, a fine-tune against its base), through one lens.

Both are scored by the same engine setup (the Session's backend, dtype and mode; the reference in a
child process) on the same text, teacher-forced: per position KL(reference || model) — mean, median,
p99, max — top-1 agreement, and each model's perplexity with the paired difference's 95 % interval, as
llama.cpp's `perplexity --kl-divergence` reports them. Where the engine keeps per-module hooks (the
lab backend, inspect mode) the hidden states of one prompt show where the model drifts most.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hfvllm_lab.errors import InputError
from hfvllm_lab.results.reference import ModuleDrift, ReferenceComparison

if TYPE_CHECKING:
    from hfvllm_lab.session import Session

TEXT_TOKENS = 512
DRIFT_TOKENS = 48


def reference_job(path, sequence: list[int], drift_prompt: str | None):
    """The reference checkpoint's teacher-forced scores of the text, and its hidden states on one prompt."""
    scores = path.score([sequence])[0]
    captures = None
    if drift_prompt is not None:
        path.rpc("lab_capture_start")
        try:
            path.generate([drift_prompt], 1)
        finally:
            captures = path.rpc("lab_capture_stop")
    return scores, captures


def run_reference(session: "Session", reference: str | Path, text_tokens: int = TEXT_TOKENS) -> ReferenceComparison:
    import torch
    from transformers import AutoTokenizer

    from hfvllm_lab import zoo
    from hfvllm_lab.assemble import BACKEND_LABELS
    from hfvllm_lab.diagnose.corpus import long_token_ids
    from hfvllm_lab.noise import kl_per_position, relative_rms
    from hfvllm_lab.paths.isolated import run_isolated

    begin = time.perf_counter()
    ref_dir = zoo.resolve(reference)
    mine = AutoTokenizer.from_pretrained(session.model_dir, trust_remote_code=session.trust_remote_code)
    theirs = AutoTokenizer.from_pretrained(ref_dir, trust_remote_code=session.trust_remote_code)
    check_same_tokenizer(mine, theirs, reference)
    length = min(text_tokens, session.settings.max_model_len - 1)
    if length < 16:
        raise InputError(f"max_model_len={session.settings.max_model_len} leaves too little room for a text")
    ids = long_token_ids(mine, length)
    drift_prompt = mine.decode(ids[1:DRIFT_TOKENS]) if session.backend == "lab" and session.mode == "inspect" else None

    scores = session.score_tokens([ids])[0][: length - 1].float()
    settings = replace(session.settings, model_dir=ref_dir, extra={})
    (ref_scores, ref_caps), _ = run_isolated(settings, reference_job, ids, drift_prompt)
    ref_scores = ref_scores[: length - 1].float()

    kl = kl_per_position(ref_scores, scores)
    targets = torch.tensor(ids[1:length], dtype=torch.long).unsqueeze(-1)
    nll, nll_ref = -scores.gather(-1, targets).squeeze(-1).double(), -ref_scores.gather(-1, targets).squeeze(-1).double()
    diff = nll - nll_ref
    half = 1.96 * float(diff.std()) / math.sqrt(diff.numel())
    ppl, ppl_ref = math.exp(float(nll.mean())), math.exp(float(nll_ref.mean()))
    mean_diff = float(diff.mean())
    result = ReferenceComparison(
        model=session.model_name, reference=str(reference),
        engine=f"{BACKEND_LABELS[session.backend]} ({session.dtype}, mode={session.mode})",
        tokens=int(kl.numel()), kl_mean=float(kl.mean()), kl_median=float(kl.median()),
        kl_p99=float(kl.quantile(0.99)), kl_max=float(kl.max()),
        top1_agreement=float((scores.argmax(-1) == ref_scores.argmax(-1)).double().mean()),
        ppl=ppl, ppl_reference=ppl_ref, delta_ppl=ppl - ppl_ref,
        delta_ppl_low=ppl_ref * math.exp(mean_diff - half) - ppl_ref,
        delta_ppl_high=ppl_ref * math.exp(mean_diff + half) - ppl_ref,
        kl_per_position=kl.tolist())
    result.notes.append(f"text: {length} tokens of English prose (the standard library's docstrings), teacher-forced "
                        "on both; the reference ran on an engine of its own with the same settings")
    if drift_prompt is not None and ref_caps:
        caps = session.capture(drift_prompt)
        result.drift = [ModuleDrift(name, relative_rms(value, ref_caps[name])) for name, value in caps.items()
                        if name in ref_caps and ref_caps[name].shape == value.shape]
    else:
        result.notes.append("per-module drift needs the lab backend in mode='inspect' (per-module hooks)")
    result.seconds = time.perf_counter() - begin
    return result


def check_same_tokenizer(mine, theirs, reference) -> None:
    """Refuse two checkpoints whose tokenizers differ: their distributions are over different tokens."""
    from hfvllm_lab.diagnose.corpus import long_text

    sample = long_text()[:2000]
    if mine.get_vocab() != theirs.get_vocab():
        raise InputError(f"{reference} has a different tokenizer (vocabularies of {len(mine.get_vocab())} and "
                         f"{len(theirs.get_vocab())} tokens differ): its distributions are over other tokens")
    if mine.encode(sample) != theirs.encode(sample):
        raise InputError(f"{reference} tokenizes the same text differently: its distributions are not comparable")


__all__ = ["check_same_tokenizer", "reference_job", "run_reference"]
