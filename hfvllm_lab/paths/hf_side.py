"""Everything `compare()` needs from the HF-native path, as one call returning plain data.

It runs in this process, or in a fresh child process when this one cannot build transformers
models any more (vLLM's built-in Transformers backend patches HF classes in its process).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.timing import LayerTiming


@dataclass(frozen=True)
class HfSideRequest:
    model_dir: Path
    device: str
    dtype: str
    attention: str
    prompts: list[str]
    max_tokens: int
    capture_prompt: str | None = None
    trust_remote_code: bool = False
    profile: bool = True
    # Score each prompt + its greedy continuation (teacher forcing) and return full distributions.
    teacher_forcing: bool = True
    # Also score (and capture) in float32: the truth that reduced-precision paths are judged by.
    float32_truth: bool = False
    # The engine's own greedy sequences (prompt + continuation), to judge its decode steps: teacher-
    # forced in the truth's dtype, and decoded by transformers in the session's dtype (the floor).
    decode_sequences: list[list[int]] = field(default_factory=list)
    decode_prompt_lengths: list[int] = field(default_factory=list)


@dataclass
class HfSideResult:
    """What the HF path produced; plain data, so it crosses a process boundary."""

    generations: list[Generation]
    seconds: float
    timing: LayerTiming | None
    attention_impl: str
    attention_reason: str
    param_bytes: int
    memory_bytes: int
    memory_source: str
    sequences: list[list[int]] = field(default_factory=list)  # prompt + greedy continuation
    scores: list[Any] | None = None  # per sequence [tokens, vocab] float32 logprobs, session dtype
    captures: dict[str, Any] | None = None  # module -> hidden states, session dtype
    capture_ids: list[int] | None = None
    float32_scores: list[Any] | None = None
    float32_captures: dict[str, Any] | None = None
    decode_truth: list[Any] | None = None  # per decode sequence, continuation rows teacher-forced (truth dtype)
    decode_reference: list[Any] | None = None  # the same rows decoded by transformers in the session's dtype
    quantization_note: str = ""  # how transformers ran a quantized checkpoint


def run_hf_side(req: HfSideRequest) -> HfSideResult:
    from hfvllm_lab.device import memory_figure
    from hfvllm_lab.paths.hf_path import HfPath, HfProbes

    before = memory_figure(req.device)
    path = HfPath(req.model_dir, req.device, req.dtype, req.attention, req.trust_remote_code)
    try:
        loaded = memory_figure(req.device)
        probes = HfProbes(path)
        path.generate(req.prompts[:1], 1)  # warm-up, excluded
        begin = time.perf_counter()
        generations = path.generate(req.prompts, req.max_tokens)
        seconds = time.perf_counter() - begin
        result = HfSideResult(
            generations=generations,
            seconds=seconds,
            timing=probes.profile(req.prompts, req.max_tokens, warmup=0) if req.profile else None,
            attention_impl=path.attention,
            attention_reason=path.attention_reason,
            param_bytes=sum(p.numel() * p.element_size() for p in path.model.parameters()),
            memory_bytes=loaded.bytes - before.bytes,
            memory_source=f"{loaded.source} delta",
            sequences=[g.prompt_token_ids + g.token_ids for g in generations],
            quantization_note=path.quantization_note(),
        )
        if req.capture_prompt is not None:
            result.capture_ids = path.encode(req.capture_prompt)
            result.captures = probes.capture(result.capture_ids)
        if req.teacher_forcing:
            result.scores = path.score(result.sequences)
        if req.decode_sequences:
            if req.dtype != "float32":  # the floor's decode; float32 is judged by the strict rule alone
                result.decode_reference = path.decode_along(req.decode_sequences, req.decode_prompt_lengths)
            if not (req.float32_truth and req.dtype != "float32"):
                result.decode_truth = _continuations(path, req)
    finally:
        path.close()
    if req.float32_truth and req.dtype != "float32":
        truth = HfPath(req.model_dir, req.device, "float32", path.attention, req.trust_remote_code)
        try:
            result.float32_scores = truth.score(result.sequences) if req.teacher_forcing else None
            if result.capture_ids is not None:
                result.float32_captures = HfProbes(truth).capture(result.capture_ids)
            if req.decode_sequences:
                result.decode_truth = _continuations(truth, req)
        finally:
            truth.close()
    return result


def _continuations(path, req: HfSideRequest) -> list:
    from hfvllm_lab.paths.hf_scoring import continuation_rows

    return [continuation_rows(s, n, len(q)) for s, n, q in
            zip(path.score(req.decode_sequences), req.decode_prompt_lengths, req.decode_sequences)]


def transformers_patched_by_vllm(model_dir: Path, trust_remote_code: bool = False) -> bool:
    """Whether a class of this model's HF modelling module had its `__init__` replaced by vLLM
    (the built-in Transformers backend's torch.compile decorator does that, process-wide)."""
    import inspect
    import sys

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if cls is None:
        return False
    module = sys.modules.get(cls.__module__)
    for _, member in inspect.getmembers(module, inspect.isclass):
        init = vars(member).get("__init__")
        if init is not None and getattr(init, "__module__", "").startswith("vllm."):
            return True
    return False


def run_hf_side_isolated(req: HfSideRequest) -> HfSideResult:
    """`run_hf_side` in a spawned child process (clean transformers classes, memory freed on exit)."""
    from hfvllm_lab.paths.spawn import run_spawned

    return run_spawned(run_hf_side, req)
