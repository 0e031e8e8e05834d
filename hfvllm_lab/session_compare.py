"""`Session.compare()`: run the vLLM path and the reference path, one after the other if needed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hfvllm_lab.assemble import BACKEND_LABELS, bisect_result, prompt_comparisons
from hfvllm_lab.device import is_accelerator
from hfvllm_lab.paths.hf_side import HfSideRequest
from hfvllm_lab.results.comparison import Comparison, PathFigures
from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.timing import timing_from_dict

if TYPE_CHECKING:
    from hfvllm_lab.session import Session


def free_device_bytes(device: str) -> int:
    if is_accelerator(device):
        import torch

        return torch.accelerator.get_memory_info()[0]
    import psutil

    return psutil.virtual_memory().available


def choose_residency(session: "Session", requested: str) -> tuple[bool, str]:
    """(sequential?, why). The HF model needs its parameters plus working room beside the engine."""
    build = session._build or {}
    need = int((build.get("eager_param_bytes") or _checkpoint_bytes(session)) * 1.5) + (256 << 20)
    free = free_device_bytes(session.device)
    if requested == "sequential":
        return True, "sequential (requested): engine closed while the HF model ran, then rebuilt"
    if requested == "both":
        return False, "both resident (requested)"
    if free < need:
        return True, (f"sequential: the HF model needs ~{need >> 20} MiB and {free >> 20} MiB are free beside the "
                      "engine, so the engine was closed while HF ran, then rebuilt")
    return False, f"both resident: the HF model (~{need >> 20} MiB with room) fits in {free >> 20} MiB free"


def _checkpoint_bytes(session: "Session") -> int:
    return sum(p.stat().st_size for p in session.model_dir.glob("*.safetensors"))


def run_comparison(session: "Session", prompts: list[str], max_tokens: int, *, bisect: bool, against: str,
                   hf_attention: str, residency: str) -> Comparison:
    engine = session.engine
    engine.generate(prompts[:1], 1)  # warm-up, excluded
    begin = time.perf_counter()
    vllm_out = engine.generate(prompts, max_tokens)
    vllm_seconds = time.perf_counter() - begin
    vllm_timing = session.profile(prompts, max_tokens, warmup=0)
    kv = engine.rpc("lab_memory")
    vllm_caps = session._capture_vllm(prompts[0]) if bisect else None
    vllm_label = BACKEND_LABELS[session.backend]
    param_bytes = _engine_param_bytes(session, kv)
    engine_bytes = kv["process_bytes"] - session._before.bytes
    source = f"{kv['source']} delta"
    figures = {"vllm": PathFigures("vllm", vllm_label, _rate(vllm_out, vllm_seconds), _count(vllm_out),
                                   vllm_seconds, param_bytes, engine_bytes, source)}
    timing = {"vllm": vllm_timing}

    if against == "vllm":
        begin = time.perf_counter()
        ref_out = engine.generate(prompts, max_tokens)
        ref_seconds = time.perf_counter() - begin
        figures["reference"] = PathFigures("vllm", f"{vllm_label} (second run)", _rate(ref_out, ref_seconds),
                                           _count(ref_out), ref_seconds, param_bytes, engine_bytes, source)
        cmp = Comparison(session.model_name, session.device, session.dtype, prompt_comparisons(ref_out, vllm_out, session.dtype),
                         figures, timing, "one engine, run twice")
        if bisect:
            cmp.bisect = bisect_result(prompts[0], vllm_caps, session._capture_vllm(prompts[0]),
                                       session._tolerance(None))
        return cmp

    sequential, why = choose_residency(session, residency)
    if session._hf_isolated():
        why += ("; the HF path ran in a child process: vLLM's built-in Transformers backend has patched this "
                "model's transformers classes in this process")
    req = HfSideRequest(session.model_dir, session.device, session.dtype, hf_attention, prompts, max_tokens,
                        capture_prompt=prompts[0] if bisect else None, trust_remote_code=session.trust_remote_code)
    if sequential:
        why += "; the rebuilt engine's attention counters start from zero"
        engine.close()
    try:
        hf = session._run_hf(req)
    finally:
        if sequential:
            session._start_engine()
    hf_out = [Generation.from_dict(g) for g in hf["generations"]]
    figures["hf"] = PathFigures("hf", f"transformers ({hf['attention_impl']}: {hf['attention_reason']})",
                                _rate(hf_out, hf["seconds"]), _count(hf_out), hf["seconds"], hf["param_bytes"],
                                hf["memory_bytes"], hf["memory_source"])
    timing["hf"] = timing_from_dict(hf["timing"])
    cmp = Comparison(session.model_name, session.device, session.dtype, prompt_comparisons(hf_out, vllm_out, session.dtype),
                     figures, timing, why)
    if bisect:
        cmp.bisect = bisect_result(prompts[0], vllm_caps, hf["captures"], session._tolerance(None))
    return cmp


def _engine_param_bytes(session: "Session", kv: dict) -> int:
    """Parameter bytes as loaded. vLLM's CPU backend repacks linear weights after loading into
    storage that is no longer a Parameter, so the build report's figure is the honest one."""
    for phase in (session._build or {}).get("phases", []):
        if phase["phase"] == "loaded":
            return phase["device_bytes"]
    return kv["param_bytes"]


def _count(gens: list[Generation]) -> int:
    return sum(len(g.token_ids) for g in gens)


def _rate(gens: list[Generation], seconds: float) -> float:
    return _count(gens) / seconds if seconds > 0 else 0.0
