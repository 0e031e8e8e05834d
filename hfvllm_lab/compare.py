"""`Session.compare()` and `Session.bisect()`: the engine under test against the HF-native path.

Uses only the Session's public API (generate, profile, memory, score_tokens, capture, released,
and its settings), so a user can assemble the same comparison by hand.

What is compared, on the same prompts:
- free-running greedy tokens and top-k logprobs (vLLM's own parity rule);
- teacher forcing: every path scores the same sequences (prompt + the reference's greedy
  continuation) and full next-token distributions are compared with transformers in float32;
- in reduced precision, the verdict is relative to the noise floor measured in the same run:
  transformers in the session's dtype and, where vLLM has a native class, vLLM native.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hfvllm_lab.assemble import BACKEND_LABELS, bisect_result, prompt_comparisons
from hfvllm_lab.device import free_device_bytes
from hfvllm_lab.noise import distribution_diff, module_noise, noise_verdict
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
    return PathFigures("vllm", label, _rate(out, seconds), _count(out), seconds, param_bytes, engine_bytes,
                       f"{kv.source} delta")


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

    sequential, why = choose_residency(session, residency)
    if session.hf_in_child_process:
        why += ("; the HF path ran in a child process: vLLM's built-in Transformers backend has patched this "
                "model's transformers classes in this process")
    req = hf_request(session, prompts, max_tokens, hf_attention=hf_attention,
                     capture_prompt=prompts[0] if bisect else None, profile=profile)
    if sequential:
        why += "; the rebuilt engine's attention counters start from zero"
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
    cmp.teacher = teacher_forced(session, hf, vllm_label, native_floor, tokenization_agrees(hf.generations, vllm_out))
    if bisect:
        cmp.bisect = _bisect_from(session, prompts[0], vllm_out[0].prompt_token_ids, vllm_caps, hf, None)
    return cmp


def teacher_forced(session: "Session", hf: HfSideResult, vllm_label: str, native_floor: bool | None,
                   ids_agree: bool) -> TeacherForced:
    """Score the reference's sequences on the engine (and, for the floor, on vLLM native in a child
    process) and compare every path's distributions with the float32 truth."""
    sequences = hf.sequences
    result = TeacherForced(session.dtype, sequences, [len(g.prompt_token_ids) for g in hf.generations])
    judged_name = f"{vllm_label} ({session.dtype})"
    engine_scores = session.score_tokens(sequences)
    if session.dtype == "float32":
        result.judged = distribution_diff(judged_name, TRUTH, hf.scores, engine_scores, sequences)
    else:
        truth = hf.float32_scores
        result.judged = distribution_diff(judged_name, TRUTH, truth, engine_scores, sequences)
        result.floors.append(distribution_diff(f"transformers ({session.dtype})", TRUTH, truth, hf.scores, sequences))
        native = _native_floor(session, sequences, native_floor, result.notes)
        if native is not None:
            result.floors.append(distribution_diff(f"vLLM native ({session.dtype})", TRUTH, truth, native, sequences))
    result.verdict = noise_verdict(result.judged, result.floors, session.dtype, ids_agree)
    return result


def _native_floor(session: "Session", sequences: list[list[int]], wanted: bool | None, notes: list[str]):
    """vLLM native's scores in the session's dtype, from an engine in a child process."""
    from dataclasses import replace

    from transformers import AutoConfig

    from hfvllm_lab.paths.vllm_path import has_native_class, score_isolated

    if wanted is False:
        notes.append("vLLM native floor not measured (native_floor=False)")
        return None
    if session.backend == "native":
        notes.append("vLLM native is the path under test, so it is not also a floor")
        return None
    config = AutoConfig.from_pretrained(session.model_dir, trust_remote_code=session.trust_remote_code)
    if not has_native_class(config):
        notes.append(f"vLLM has no native class for {', '.join(config.architectures or ['?'])}: "
                     "the floor is transformers' own rounding only")
        return None
    settings = replace(session.settings, backend="native", tensor_parallel_size=1)
    return score_isolated(settings, sequences)


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
    teacher.judged = distribution_diff(name, f"{name}, second run", first_scores, second_scores, sequences)
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
