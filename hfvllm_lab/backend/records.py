"""What the lab backend did while building a model: plain data, no torch at import."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Module kinds and actions are defined once, in hfvllm_lab.vocab; re-exported here for the backend.
from hfvllm_lab.vocab import (  # noqa: F401
    ATTENTION,
    ELSEWHERE,
    EMBEDDING,
    EXPERTS,
    FUSED,
    KEPT,
    LAYER,
    LINEAR,
    LM_HEAD,
    NORM,
    OTHER,
    REPLACED,
    ROTARY,
    ROUTED,
    STATE,
    TIED,
)


@dataclass(frozen=True)
class ReplacementRecord:
    """One candidate module: swapped for a vLLM layer, routed, or left alone (with why)."""

    name: str
    kind: str
    action: str
    original_class: str
    new_class: str | None
    shape: tuple[int, ...] = ()
    parameters: int = 0
    reason: str = ""
    fused_from: tuple[str, ...] = ()  # action "fused": the HF modules merged into this vLLM layer
    shard_shape: tuple[int, ...] = ()  # tensor parallel: this rank's part of the weight, where it is split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttentionLayerSpec:
    """The vLLM `Attention` that serves one HF attention module."""

    layer: int
    module: str
    hf_class: str
    vllm_prefix: str
    num_heads: int
    num_kv_heads: int
    head_size: int
    scale: float
    sliding_window: int | None
    logits_soft_cap: float | None
    sinks: str | None = None  # the HF module's parameter passed as attention sinks (s_aux)
    # The HF value head size (None: head_size). Smaller than head_size (MLA): the values are zero-padded
    # to head_size for vLLM's one-head-size Attention and its output is cut back.
    value_head_size: int | None = None
    attention_chunk_size: int | None = None  # chunked local attention (Llama-4): vLLM's ChunkedLocalAttention

    @property
    def padded_values(self) -> bool:
        return self.value_head_size is not None and self.value_head_size != self.head_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PhaseBytes:
    """Exact parameter bytes at one build phase (on a real device, still on meta), plus the
    device allocator's figure (accelerators) or process RSS (CPU) at that moment."""

    phase: str
    device_bytes: int
    meta_bytes: int
    buffer_bytes: int
    seconds: float
    process_bytes: int = 0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildReport:
    """Everything the backend records while building one model; kept on the model instance."""

    architecture: str
    hf_class: str
    device: str
    dtype: str
    tensor_parallel_size: int = 1
    # Where this rank sits: tensor rank, pipeline rank of the pipeline size, decoder layers held [start, end)
    tensor_rank: int = 0
    pipeline_parallel_size: int = 1
    pipeline_rank: int = 0
    layers_held: tuple[int, int] | None = None
    replicated_bytes: int = 0  # of the loaded parameters, those every tensor rank holds whole (backend/meta.py)
    tied_copy_bytes: int = 0  # pipeline parallel: the last rank's own copy of a head tied to rank 0's embedding
    records: list[ReplacementRecord] = field(default_factory=list)
    attention: list[AttentionLayerSpec] = field(default_factory=list)
    phases: list[PhaseBytes] = field(default_factory=list)
    eager_param_bytes: int = 0
    logits: dict[str, Any] = field(default_factory=dict)
    loaded_weights: int = 0
    ignored_weights: list[str] = field(default_factory=list)
    kept_fp32: list[str] = field(default_factory=list)  # parameters left in float32 by the model's wish
    # Build options and where each came from, e.g. {"fusions and CPU kernels": "off (hf_overrides lab_fuse=False)"}
    options: dict[str, str] = field(default_factory=dict)
    weight_updates: list[str] = field(default_factory=list)  # load_weights calls after the first, in order
    # Stateful modules (backend/state/): how many, bytes per request, the layout; empty otherwise
    state: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "hf_class": self.hf_class,
            "device": self.device,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "tensor_rank": self.tensor_rank,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "pipeline_rank": self.pipeline_rank,
            "layers_held": list(self.layers_held) if self.layers_held else None,
            "replicated_bytes": self.replicated_bytes,
            "tied_copy_bytes": self.tied_copy_bytes,
            "records": [r.to_dict() for r in self.records],
            "attention": [a.to_dict() for a in self.attention],
            "phases": [p.to_dict() for p in self.phases],
            "eager_param_bytes": self.eager_param_bytes,
            "logits": dict(self.logits),
            "loaded_weights": self.loaded_weights,
            "ignored_weights": list(self.ignored_weights),
            "kept_fp32": list(self.kept_fp32),
            "options": dict(self.options),
            "weight_updates": list(self.weight_updates),
            "state": dict(self.state),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildReport":
        report = cls(**{k: v for k, v in data.items() if k not in ("records", "attention", "phases")})
        report.layers_held = tuple(report.layers_held) if report.layers_held else None
        report.records = [ReplacementRecord(**{**r, "shape": tuple(r["shape"]),
                                                 "fused_from": tuple(r.get("fused_from", ())),
                                                 "shard_shape": tuple(r.get("shard_shape", ()))})
                          for r in data["records"]]
        report.attention = [AttentionLayerSpec(**a) for a in data["attention"]]
        report.phases = [PhaseBytes(**p) for p in data["phases"]]
        return report

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, action) -> number of records."""
        out: dict[tuple[str, str], int] = {}
        for r in self.records:
            out[(r.kind, r.action)] = out.get((r.kind, r.action), 0) + 1
        return out

    def summary(self) -> str:
        lines = [f"{self.hf_class} built by the lab backend on {self.device} ({self.dtype})"]
        lines += [f"  {key}: {value}" for key, value in self.options.items()]
        for (kind, action), n in sorted(self.counts().items()):
            lines.append(f"  {kind:<10} {action:<9} {n}")
        if self.logits.get("steps"):
            cap = self.logits.get("soft_cap")
            lines.append(f"  logits     scale {self.logits.get('scale', 1.0):g}"
                         f"{f', soft-cap {cap:g}' if cap else ''} ({'; '.join(self.logits['steps'])})")
        kept = [r for r in self.records if r.action == KEPT and r.kind != ROTARY]
        for r in kept[:5]:
            lines.append(f"  kept {r.name} ({r.original_class}): {r.reason}")
        return "\n".join(lines)
