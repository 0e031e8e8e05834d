"""Everything `compare()` needs from the HF-native path, as one call returning plain data.

It runs in this process, or in a fresh child process when this one cannot build transformers
models any more (vLLM's built-in Transformers backend patches HF classes in its process).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def run_hf_side(req: HfSideRequest) -> dict[str, Any]:
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
        timing = probes.profile(req.prompts, req.max_tokens, warmup=0)
        captures = probes.capture(req.capture_prompt) if req.capture_prompt is not None else None
        param_bytes = sum(p.numel() * p.element_size() for p in path.model.parameters())
        return {
            "generations": [g.to_dict() for g in generations],
            "seconds": seconds,
            "timing": timing.to_dict(),
            "attention_impl": path.attention,
            "attention_reason": path.attention_reason,
            "param_bytes": param_bytes,
            "memory_bytes": loaded.bytes - before.bytes,
            "memory_source": f"{loaded.source} delta",
            "captures": captures,
        }
    finally:
        path.close()


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


def run_hf_side_isolated(req: HfSideRequest) -> dict[str, Any]:
    """`run_hf_side` in a spawned child process (clean transformers classes, memory freed on exit)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_hf_side, req).result()
