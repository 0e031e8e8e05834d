"""What the worker extension's probes send back across the process boundary: typed dataclasses.

`collective_rpc` returns these objects as they are in-process (TP = 1) and pickled from each rank
in a multi-process engine, so the worker (`probes/worker.py`) and the assembler (`assemble.py`)
share one definition and read attributes, never string keys. Plain data only: no torch here.

Each probe method and what it returns:

    lab_model_class       str, the built model class as `module.QualName`
    lab_build_report      backend.records.BuildReport (a copy), or None for other backends
    lab_module_tree       list[results.replacements.ModuleNode]
    lab_memory            MemoryPayload
    lab_attention_counts  AttentionCountsPayload
    lab_timing_stop       results.timing.LayerTiming, or None when no probe was running
    lab_capture_stop      dict[str, torch.Tensor] (module name -> CPU output), or None
    lab_logprobs_stop     list[torch.Tensor] ([tokens, vocab] per prefill), or None
    lab_decode_take       dict[str, torch.Tensor] (request key -> [steps, vocab] of sampling steps)
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The decode probe (probes/decode.py): the logits processor every lab-built engine gets, and the key
# of SamplingParams.extra_args a request uses to ask it for captures or forced tokens.
DECODE_PROBE = "hfvllm_lab.probes.decode:LabDecodeProbe"
DECODE_EXTRA_KEY = "hfvllm_lab"


@dataclass(frozen=True)
class MemoryPayload:
    """Figures after the KV cache is allocated: exact KV-cache and parameter bytes, and the device
    allocator's figure (accelerators) or process RSS (CPU), as `source` says."""

    kv_cache_bytes: int
    param_bytes: int
    process_bytes: int
    source: str
    # Parameter bytes the lab keeps loadable for later load_weights calls beside the copies the
    # device's kernels packed (backend/reload.py); 0 where nothing was repacked or nothing is kept.
    loadable_copy_bytes: int = 0
    # Stateful modules' per-request state in vLLM's cache pool (backend/state/): bytes the state
    # views span over all slots, bytes per request, and the number of stateful modules; 0 otherwise.
    state_cache_bytes: int = 0
    state_bytes_per_request: int = 0
    state_modules: int = 0


@dataclass(frozen=True)
class AttentionLayerPayload:
    """One attention layer: implementation -> calls since the counters were last reset."""

    layer: int
    module: str
    backend: str  # the vLLM attention backend serving it, e.g. "CPU_ATTN"
    counts: dict[str, int] = field(default_factory=dict)
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_size: int | None = None
    sliding_window: int | None = None


@dataclass(frozen=True)
class AttentionCountsPayload:
    """Per-layer attention counts and the model forward calls they cover."""

    layers: list[AttentionLayerPayload] = field(default_factory=list)
    forward_calls: int = 0
    mode: str = "vllm"  # the attention mode the model ran: "vllm", "sdpa" or "eager"


__all__ = ["MemoryPayload", "AttentionLayerPayload", "AttentionCountsPayload"]
