"""`Session.compare()` and `Session.bisect()`: the engine under test against the HF-native path.

Built on the Session's API (generate, profile, memory, score_tokens, decode_scores, capture, released,
its edits and settings), so a user can assemble the same comparison by hand; reference engines (vLLM
native as a floor) run in child processes (`paths/isolated.py`).

What is compared, on the same prompts:
- free-running greedy tokens and top-k logprobs (vLLM's own parity rule);
- teacher forcing: every path scores the same sequences (prompt + the reference's greedy
  continuation) and full next-token distributions are compared with transformers in float32;
- decode steps: the engine's own greedy sequences, each decode step's full distribution against
  transformers float32 teacher-forced on the same tokens;
- in reduced precision, the verdicts are relative to the noise floor measured in the same run:
  transformers in the session's dtype and, where vLLM has a native class, vLLM native.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hfvllm_lab.assemble import BACKEND_LABELS, bisect_result, prompt_comparisons
from hfvllm_lab.device import free_device_bytes
from hfvllm_lab.errors import ProbeUnavailableError
from hfvllm_lab.noise import distribution_diff, module_noise, next_tokens, noise_verdict
from hfvllm_lab.rules import worse_of
from hfvllm_lab.paths.hf_scoring import decode_step_rows
from hfvllm_lab.paths.hf_side import HfSideRequest, HfSideResult, run_hf_side, run_hf_side_isolated
from hfvllm_lab.results.comparison import BisectResult, Comparison, PathFigures, tokenization_agrees
from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.teacher import TeacherForced

if TYPE_CHECKING:
    from hfvllm_lab.session import Session

TRUTH = "transformers (float32)"
# Bisect tolerance in float32: max |diff| within this share of the HF output's RMS.
FLOAT32_BISECT_TOLERANCE = 1e-3


def choose_residency(session: "Session", requested: str) -> tuple[bool, str]:
    """(sequential?, why). The HF model needs its parameters plus working room beside the engine."""
    eager = session.memory.eager_param_bytes
    if not eager:
        eager = sum(p.stat().st_size for p in session.model_dir.glob("*.safetensors"))
    # A float32 truth beside a reduced-precision engine doubles the HF parameters.
    widen = 2 if session.dtype != "float32" else 1
    need = int(eager * widen * 1.5) + (256 << 20)
    free = free_device_bytes(session.device)
    if requested == "sequential":
        return True, "sequential (requested): engine closed while the HF model ran, then rebuilt"
    if requested == "both":
        return False, "both resident (requested)"
    if free < need:
        return True, (f"sequential: the HF model needs ~{need >> 20} MiB and {free >> 20} MiB are free beside the "
                      "engine, so the engine was closed while HF ran, then rebuilt")
    return False, f"both resident: the HF model (~{need >> 20} MiB with room) fits in {free >> 20} MiB free"


def rebuild_note(session: "Session", requested: bool) -> str:
    """What a rebuild between the two halves keeps. Edits made through Session.apply_model are
    applied again; calls made on the engine directly cannot be, so an automatic rebuild is refused
    and a requested one says the edits were lost."""
    lost = session.engine.untracked_calls
    if lost and not requested:
        raise ProbeUnavailableError(
            f"the HF model does not fit beside the engine, so compare() would rebuild the engine between its "
            f"halves, and the engine was changed through engine.apply_model ({lost} call(s)), which a rebuild "
            "cannot repeat: the edit would be judged as the clean model. Make edits with Session.apply_model "
            "(re-applied after a rebuild), or pass residency='sequential' to accept a rebuilt, unedited engine")
    note = "; the rebuilt engine's attention counters start from zero"
    if session.edits:
        note += f"; {len(session.edits)} edit(s) made through Session.apply_model were applied to the rebuilt engine"
    if lost:
        note += (f"; EDITS LOST: {lost} engine.apply_model call(s) could not be repeated on the rebuilt engine, so "
                 "the prefill scores judge the engine without them (the free-running tokens and the decode steps "
                 "came from the edited engine before the rebuild)")
    return note


def beside_engine(session: "Session", work, residency: str = "auto"):
    """(what `work()` returned, residency note): transformers work run beside the engine when the device
    has room, else with the engine closed meanwhile and rebuilt after (the same rules as compare())."""
    sequential, why = choose_residency(session, residency)
    if not sequential:
        return work(), why
    why += rebuild_note(session, requested=residency == "sequential")
    with session.released():
        return work(), why


def run_hf(session: "Session", req: HfSideRequest) -> HfSideResult:
    return run_hf_side_isolated(req) if session.hf_in_child_process else run_hf_side(req)


def hf_request(session: "Session", prompts: list[str], max_tokens: int, *, hf_attention: str,
               capture_prompt: str | None = None, profile: bool = True) -> HfSideRequest:
    return HfSideRequest(session.model_dir, session.device, session.dtype, hf_attention, prompts, max_tokens,
                         capture_prompt=capture_prompt, trust_remote_code=session.trust_remote_code,
                         profile=profile, float32_truth=session.dtype != "float32")


def engine_figures(session: "Session", label: str, out: list[Generation], seconds: float) -> PathFigures:
    memory = session.memory
    loaded, kv, before = memory.phase("loaded"), memory.phase("kv_cache"), memory.phase("before")
    param_bytes = loaded.param_bytes if loaded is not None else kv.param_bytes
    engine_bytes = kv.process_bytes - before.process_bytes
    source = f"{kv.source} delta"
    if session.settings.layout.world > 1:  # worker processes: the whole model's bytes, every worker's memory
        ranks = session.ranks
        param_bytes = ranks.model_param_bytes()
        engine_bytes = sum(r.process_bytes or 0 for r in ranks.rows)
        source = f"{kv.source} of {len(ranks)} worker processes"
    return PathFigures("vllm", label, _rate(out, seconds), _count(out), seconds, param_bytes, engine_bytes, source)


def run_comparison(session: "Session", prompts: list[str], max_tokens: int, *, bisect: bool, against: str,
                   hf_attention: str, residency: str, native_floor: bool | None = None,
                   profile: bool = True) -> Comparison:
    session.generate(prompts[:1], 1)  # warm-up, excluded
    begin = time.perf_counter()
    vllm_out = session.generate(prompts, max_tokens)
    vllm_seconds = time.perf_counter() - begin
    timing = {"vllm": session.profile(prompts, max_tokens, warmup=0)} if profile else {}
    vllm_caps = session.capture(prompts[0]) if bisect else None
    vllm_label = BACKEND_LABELS[session.backend]
    figures = {"vllm": engine_figures(session, vllm_label, vllm_out, vllm_seconds)}
    if against == "vllm":
        return _against_itself(session, prompts, max_tokens, vllm_out, figures, timing, vllm_caps)
    # The engine's own greedy sequences, decoded again in the same batch with its choices forced: the
    # same decode steps, now with each step's full distribution (what users' tokens came from).
    decode = engine_decode(session, vllm_out) if any(len(g.token_ids) > 1 for g in vllm_out) else None

    sequential, why = choose_residency(session, residency)
    if session.hf_in_child_process:
        why += ("; the HF path ran in a child process: vLLM's built-in Transformers backend has patched this "
                "model's transformers classes in this process")
    req = hf_request(session, prompts, max_tokens, hf_attention=hf_attention,
                     capture_prompt=prompts[0] if bisect else None, profile=profile)
    if decode is not None:
        req = replace(req, decode_sequences=decode.sequences, decode_prompt_lengths=decode.prompt_lengths)
    if sequential:
        why += rebuild_note(session, requested=residency == "sequential")
        with session.released():
            hf = run_hf(session, req)
    else:
        hf = run_hf(session, req)
    figures["hf"] = PathFigures("hf", f"transformers ({hf.attention_impl}: {hf.attention_reason})",
                                _rate(hf.generations, hf.seconds), _count(hf.generations), hf.seconds,
                                hf.param_bytes, hf.memory_bytes, hf.memory_source)
    if hf.timing is not None:
        timing["hf"] = hf.timing
    cmp = Comparison(session.model_name, session.device, session.dtype,
                     prompt_comparisons(hf.generations, vllm_out, session.dtype), figures, timing, why)
    cmp.dtype_reason, cmp.mode = session.dtype_reason, session.mode
    cmp.teacher = teacher_forced(session, hf, vllm_label, native_floor, tokenization_agrees(hf.generations, vllm_out),
                                 decode)
    if decode is None:
        cmp.teacher.notes.append("decode steps not judged: no sequence reached a second token (max_tokens=1)")
    if hf.quantization_note:  # the truth and the transformers floor are this emulation of the checkpoint
        cmp.teacher.notes.append(f"quantized checkpoint: {hf.quantization_note}; the float32 truth runs the same "
                                 "quantized weights, so the verdict judges the engine's kernels, not the quantization")
    if bisect:
        cmp.bisect = _bisect_from(session, prompts[0], vllm_out[0].prompt_token_ids, vllm_caps, hf, None)
    return cmp


@dataclass(frozen=True)
class EngineDecode:
    """The engine's own greedy sequences and each decode step's full distribution."""

    sequences: list[list[int]]
    prompt_lengths: list[int]
    rows: list  # per sequence [continuation, vocab]; row 0 from the prefill, then one per decode step


def engine_decode(session: "Session", generations: list[Generation]) -> EngineDecode:
    sequences = [g.prompt_token_ids + g.token_ids for g in generations]
    lengths = [len(g.prompt_token_ids) for g in generations]
    return EngineDecode(sequences, lengths, session.decode_scores(sequences, lengths, composition="batch"))


def decode_steps(rows: list, sequences: list[list[int]], prompt_lengths: list[int]) -> tuple[list, list[list[int]]]:
    """Rows of decode steps only (row 0 came from the prefill) and the tokens they predict."""
    return decode_step_rows(rows), [list(q[n + 1:]) for q, n in zip(sequences, prompt_lengths)]


def teacher_forced(session: "Session", hf: HfSideResult, vllm_label: str, native_floor: bool | None,
                   ids_agree: bool, decode: EngineDecode | None = None) -> TeacherForced:
    """Prefill: score the reference's sequences on the engine in one prefill each. Decode: the engine's
    own decode steps along its greedy sequences. Every path's distributions against the float32 truth;
    in reduced precision against the floors (transformers in the session's dtype, teacher-forced for
    prefill and decoding with its KV cache for decode; vLLM native in a child process, the same ways)."""
    sequences = hf.sequences
    result = TeacherForced(session.dtype, sequences, [len(g.prompt_token_ids) for g in hf.generations])
    judged_name = f"{vllm_label} ({session.dtype})"
    engine_scores = session.score_tokens(sequences)
    float32 = session.dtype == "float32"
    truth = hf.scores if float32 else hf.float32_scores
    result.judged = distribution_diff(judged_name, TRUTH, truth, engine_scores, next_tokens(sequences))
    native = None if float32 else _native_floor(session, sequences, decode, native_floor, result.notes)
    if not float32:
        result.floors.append(distribution_diff(f"transformers ({session.dtype})", TRUTH, truth, hf.scores,
                                               next_tokens(sequences)))
        if native is not None:
            result.floors.append(distribution_diff(f"vLLM native ({session.dtype})", TRUTH, truth, native[0],
                                                   next_tokens(sequences)))
    result.prefill_verdict = noise_verdict(result.judged, result.floors, session.dtype, ids_agree)
    result.verdict = result.prefill_verdict
    if decode is not None and hf.decode_truth is not None:
        _judge_decode(result, session, judged_name, decode, hf, native[1] if native is not None else None)
        result.verdict = worse_of([("prefill", result.prefill_verdict), ("decode", result.decode_verdict)])
    return result


def _judge_decode(result: TeacherForced, session: "Session", judged_name: str, decode: EngineDecode,
                  hf: HfSideResult, native_rows) -> None:
    result.decode_sequences, result.decode_prompt_lengths = decode.sequences, decode.prompt_lengths
    truth, targets = decode_steps(hf.decode_truth, decode.sequences, decode.prompt_lengths)
    engine, _ = decode_steps(decode.rows, decode.sequences, decode.prompt_lengths)
    result.decode_judged = distribution_diff(f"{judged_name}, decode steps", TRUTH, truth, engine, targets)
    if session.dtype != "float32":
        mine, _ = decode_steps(hf.decode_reference, decode.sequences, decode.prompt_lengths)
        result.decode_floors.append(distribution_diff(f"transformers ({session.dtype}, KV-cache decode)", TRUTH,
                                                      truth, mine, targets))
        if native_rows is not None:
            rows, _ = decode_steps(native_rows, decode.sequences, decode.prompt_lengths)
            result.decode_floors.append(distribution_diff(f"vLLM native ({session.dtype}, decode steps)", TRUTH,
                                                          truth, rows, targets))
    result.decode_verdict = noise_verdict(result.decode_judged, result.decode_floors, session.dtype)


def native_floor_job(path, sequences: list[list[int]], decode_sequences: list[list[int]] | None,
                     decode_prompt_lengths: list[int] | None):
    """vLLM native's teacher-forced scores and decode steps (run_isolated's job)."""
    from hfvllm_lab.paths.engine_runs import forced_decode

    rows = forced_decode(path, decode_sequences, decode_prompt_lengths).rows if decode_sequences else None
    return path.score(sequences), rows


def _native_floor(session: "Session", sequences: list[list[int]], decode: EngineDecode | None,
                  wanted: bool | None, notes: list[str]):
    """vLLM native's (prefill scores, decode rows) in the session's dtype, from an engine in a child process."""
    from hfvllm_lab.paths.isolated import native_floor_settings, run_isolated

    settings = native_floor_settings(session.settings, wanted, notes)
    if settings is None:
        return None
    out, _ = run_isolated(settings, native_floor_job, sequences, decode.sequences if decode else None,
                          decode.prompt_lengths if decode else None)
    return out


def _against_itself(session, prompts, max_tokens, vllm_out, figures, timing, vllm_caps) -> Comparison:
    begin = time.perf_counter()
    ref_out = session.generate(prompts, max_tokens)
    seconds = time.perf_counter() - begin
    first = figures["vllm"]
    figures["reference"] = PathFigures("vllm", f"{first.label} (second run)", _rate(ref_out, seconds),
                                       _count(ref_out), seconds, first.param_bytes, first.memory_bytes,
                                       first.memory_source)
    cmp = Comparison(session.model_name, session.device, session.dtype,
                     prompt_comparisons(ref_out, vllm_out, session.dtype), figures, timing, "one engine, run twice")
    cmp.dtype_reason, cmp.mode = session.dtype_reason, session.mode
    sequences = [g.prompt_token_ids + g.token_ids for g in ref_out]
    first_scores, second_scores = session.score_tokens(sequences), session.score_tokens(sequences)
    name = f"{first.label} ({session.dtype})"
    teacher = TeacherForced(session.dtype, sequences, [len(g.prompt_token_ids) for g in ref_out])
    teacher.judged = distribution_diff(name, f"{name}, second run", first_scores, second_scores, next_tokens(sequences))
    # One engine against itself must agree exactly, whatever the dtype: the float32 rule.
    teacher.verdict = noise_verdict(teacher.judged, [], "float32")
    cmp.teacher = teacher
    if vllm_caps is not None:
        again = session.capture(prompts[0])
        cmp.bisect = bisect_result(prompts[0], vllm_caps, again, FLOAT32_BISECT_TOLERANCE)
    return cmp


def bisect_against_hf(session: "Session", prompt: str, tolerance: float | None = None) -> BisectResult:
    """`Session.bisect()`: one prefill of `prompt` on the engine and on transformers."""
    vllm_ids = session.generate([prompt], 1)[0].prompt_token_ids
    vllm_caps = session.capture(prompt)
    req = hf_request(session, [prompt], 1, hf_attention=session.hf_attention, capture_prompt=prompt, profile=False)
    req = type(req)(**{**req.__dict__, "teacher_forcing": False})
    return _bisect_from(session, prompt, vllm_ids, vllm_caps, run_hf(session, req), tolerance)


def _bisect_from(session: "Session", prompt: str, vllm_ids: list[int], vllm_caps: dict, hf: HfSideResult,
                 tolerance: float | None) -> BisectResult:
    if list(vllm_ids) != list(hf.capture_ids or []):
        return BisectResult(prompt, tolerance or 0.0, [], None,
                            f"tokenization differs: the engine saw {list(vllm_ids)}, transformers "
                            f"{list(hf.capture_ids or [])}; no module was compared", mode="tokenization differs")
    if session.dtype == "float32" or tolerance is not None or hf.float32_captures is None:
        return bisect_result(prompt, vllm_caps, hf.captures, tolerance or FLOAT32_BISECT_TOLERANCE)
    rows, skipped, first = [], [], None
    for name, v in vllm_caps.items():
        h, t = hf.captures.get(name), hf.float32_captures.get(name)
        if h is None or t is None or h.shape != v.shape:
            skipped.append(name)
            continue
        row = module_noise(name, v, h, t)
        rows.append(row)
        if not row.ok and first is None:
            first = name
    note = f"not comparable (missing or differently shaped on the HF path): {', '.join(skipped)}" if skipped else ""
    return BisectResult(prompt, 0.0, rows, first, note, mode="noise")


def _count(gens: list[Generation]) -> int:
    return sum(len(g.token_ids) for g in gens)


def _rate(gens: list[Generation], seconds: float) -> float:
    return _count(gens) / seconds if seconds > 0 else 0.0
