"""`Session.diagnose()`: sample once, score the samples with transformers, run every lens, report."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hfvllm_lab.compare import beside_engine
from hfvllm_lab.diagnose.context import Shared, arm_failure
from hfvllm_lab.diagnose.corpus import long_token_ids
from hfvllm_lab.diagnose.lenses import LENSES, long_context, unavailable
from hfvllm_lab.errors import InputError
from hfvllm_lab.paths.hf_scoring import HfScoreRequest, ScorePass, run_hf_scoring_where_possible
from hfvllm_lab.results.diagnosis import Diagnosis
from hfvllm_lab.rules import LENS_FAILED, LENS_UNAVAILABLE

if TYPE_CHECKING:
    from hfvllm_lab.session import Session

PREAMBLE_TOKENS = 160  # more than one KV block of the CPU backend (128): prefix caching and chunking bite
LONG_TOKENS = 2304


def run_diagnosis(session: "Session", prompts: list[str], *, lenses=None, progress=None, n: int = 2,
                  max_tokens: int = 24, seed: int = 0, long_tokens: int = LONG_TOKENS,
                  preamble_tokens: int = PREAMBLE_TOKENS) -> Diagnosis:
    """`progress(done, total, what)` is called before each step (a tqdm bar on stderr when None)."""
    chosen = list(LENSES) if lenses is None else [lenses] if isinstance(lenses, str) else list(lenses)
    unknown = [name for name in chosen if name not in LENSES]
    if unknown:
        raise InputError(f"unknown lens(es) {unknown}: choose from {', '.join(LENSES)}")
    if max_tokens < 2 or n < 1:
        raise InputError("diagnose needs max_tokens >= 2 (decode steps to judge) and n >= 1")
    steps = ["sampling on the engine", "transformers: truth and floors", *chosen]
    report = _progress(progress, len(steps))
    begin = time.perf_counter()
    result = Diagnosis(session.model_name, session.dtype, session.backend, settings=dict(
        n=n, max_tokens=max_tokens, seed=seed, temperature=1.0, preamble_tokens=preamble_tokens,
        long_tokens=long_tokens, lenses=chosen))

    report(0, steps[0])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(session.model_dir, trust_remote_code=session.trust_remote_code)
    limit = session.settings.max_model_len
    room = max(0, min(preamble_tokens, limit - max_tokens - 64))
    preamble = long_token_ids(tokenizer, room) if room else []
    prompt_ids = [preamble + tokenizer.encode(p, add_special_tokens=not preamble) for p in prompts]
    run = session.sample(prompt_ids, n=n, max_tokens=max_tokens, temperature=1.0, seed=seed)
    kept = [s for s in run.samples if len(s.token_ids) >= 2]
    if not kept:
        raise InputError("no sample reached two tokens (EOS at once): nothing to judge in decode steps")
    sequences = [s.prompt_token_ids + s.token_ids for s in kept]
    lengths = [len(s.prompt_token_ids) for s in kept]
    result.notes.append(f"{len(kept)} sequences sampled at temperature 1 ({run.seeding}); each prompt starts with a "
                        f"{len(preamble)}-token preamble of the same text")

    report(1, steps[1])
    isolated = session.hf_in_child_process
    floors = {} if session.dtype == "float32" else {
        f"transformers ({session.dtype}, teacher-forced)": ScorePass(session.dtype, "teacher"),
        f"transformers ({session.dtype}, KV-cache decode)": ScorePass(session.dtype, "decode")}
    truth_pass = ScorePass("float32", "teacher")
    request = HfScoreRequest(session.model_dir, session.device, session.hf_attention, sequences, lengths,
                             (truth_pass, *floors.values()), session.trust_remote_code)
    hf, residency = beside_engine(session, lambda: run_hf_scoring_where_possible(request, isolated))
    result.notes.append(f"transformers ran {residency}")
    from hfvllm_lab.paths.isolated import pickled_edits

    edits, edit_note = pickled_edits(session.edits)
    shared = Shared(session, sequences, lengths, hf.outputs[truth_pass],
                    {name: hf.outputs[p] for name, p in floors.items()}, edits, edit_note,
                    speed_prompts=[q[:n] for q, n in zip(sequences[:4], lengths[:4])], isolated=isolated)
    result.sequences, result.positions = len(sequences), shared.positions

    for i, name in enumerate(chosen):
        report(2 + i, f"lens: {name}")
        start = time.perf_counter()
        try:
            if name == "long context":
                lens = _long_lens(shared, tokenizer, long_tokens, isolated)
            else:
                lens = LENSES[name](shared)
        except Exception as exc:  # noqa: BLE001 - one lens failing is reported (status failed); the others run
            why = arm_failure(exc)
            lens = unavailable(name, "", why)
            lens.status = LENS_FAILED if why.startswith("failed") else LENS_UNAVAILABLE
        lens.seconds = time.perf_counter() - start
        result.lenses.append(lens)
    report(len(steps), "done")
    result.seconds = time.perf_counter() - begin
    return result


def _long_lens(shared: Shared, tokenizer, long_tokens: int, isolated: bool):
    from hfvllm_lab.diagnose.lenses import LONG_DECODE_TOKENS

    session = shared.session
    length = min(long_tokens, session.settings.max_model_len - 1)  # scoring asks the engine for one token more
    notes = []
    if length < long_tokens:
        notes.append(f"capped at {length} tokens by max_model_len={session.settings.max_model_len}")
    ids = long_token_ids(tokenizer, length)
    teacher = [ScorePass("float32", "teacher")]
    if session.dtype != "float32":
        teacher.append(ScorePass(session.dtype, "teacher"))
    whole_request = HfScoreRequest(session.model_dir, session.device, session.hf_attention, [ids], [1],
                                   tuple(teacher), session.trust_remote_code)
    whole, _ = beside_engine(session, lambda: run_hf_scoring_where_possible(whole_request, isolated))
    # continuation rows of prompt length 1 are rows 0..L-2: prepend nothing, they already start at row 0
    long = {"ids": ids, "truth": whole.outputs[teacher[0]][0], "floors": {}, "notes": notes}
    if session.dtype != "float32":
        long["floors"][f"transformers ({session.dtype}, teacher-forced)"] = whole.outputs[teacher[1]][0]
        tail_request = HfScoreRequest(session.model_dir, session.device, session.hf_attention, [ids],
                                      [length - LONG_DECODE_TOKENS], (ScorePass(session.dtype, "decode"),),
                                      session.trust_remote_code)
        tail, _ = beside_engine(session, lambda: run_hf_scoring_where_possible(tail_request, isolated))
        long["floors"]["decode"] = tail.outputs[ScorePass(session.dtype, "decode")][0]
    return long_context(shared, long)


def _progress(callback, total: int):
    if callback is not None:
        return lambda done, what: callback(done, total, what)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="diagnose", leave=False)

    def report(done: int, what: str) -> None:
        bar.set_description(f"diagnose: {what}")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return report


__all__ = ["run_diagnosis"]
