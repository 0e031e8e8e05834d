"""The HF-native path against the vLLM path on the same prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.parity import TokenParity
from hfvllm_lab.results._base import frame, plain
from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.timing import LayerTiming


@dataclass(frozen=True)
class PromptComparison:
    prompt: str
    hf: Generation
    vllm: Generation
    parity: TokenParity
    # Per step: |HF logprob - vLLM logprob| of the token both chose; None from the first divergence.
    logprob_diffs: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class ModuleDiff:
    module: str
    max_abs_diff: float
    ok: bool


@dataclass
class BisectResult:
    """Per-module hidden-state differences of one prefill, in execution order."""

    prompt: str
    tolerance: float
    rows: list[ModuleDiff] = field(default_factory=list)
    first_divergent: str | None = None
    note: str = ""

    def to_frame(self):
        return frame([plain(r) for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return plain({"prompt": self.prompt, "tolerance": self.tolerance, "rows": self.rows,
                      "first_divergent": self.first_divergent, "note": self.note})

    def __repr__(self) -> str:
        from hfvllm_lab.render.text import bisect_text

        return bisect_text(self)

    def _repr_html_(self) -> str:
        from hfvllm_lab.render.html import bisect_html

        return bisect_html(self)


@dataclass(frozen=True)
class PathFigures:
    """Per-path run figures for the side-by-side table."""

    path: str  # "hf" or "vllm"
    label: str  # e.g. "transformers (sdpa)" or "vLLM lab backend (CPU_ATTN)"
    tokens_per_second: float
    generated_tokens: int
    seconds: float
    param_bytes: int | None
    memory_bytes: int | None
    memory_source: str


@dataclass
class Comparison:
    model: str
    device: str
    dtype: str
    prompts: list[PromptComparison] = field(default_factory=list)
    figures: dict[str, PathFigures] = field(default_factory=dict)  # "hf" / "vllm"
    timing: dict[str, LayerTiming] = field(default_factory=dict)  # "hf" / "vllm"
    residency: str = ""  # "sequential" or "both resident", with why
    bisect: BisectResult | None = None

    @property
    def ok(self) -> bool:
        return all(p.parity.ok for p in self.prompts)

    @property
    def max_logprob_diff(self) -> float:
        diffs = [d for p in self.prompts for d in p.logprob_diffs if d is not None]
        return max(diffs, default=0.0)

    def to_frame(self):
        rows = []
        for p in self.prompts:
            rows.append(dict(prompt=p.prompt, hf_tokens=p.hf.token_ids, vllm_tokens=p.vllm.token_ids,
                             ok=p.parity.ok, first_divergence=p.parity.first_divergence, reason=p.parity.reason,
                             max_logprob_diff=max((d for d in p.logprob_diffs if d is not None), default=0.0),
                             max_prompt_logprob_diff=p.parity.max_prompt_logprob_diff))
        return frame(rows)

    def to_dict(self) -> dict[str, Any]:
        return plain({"model": self.model, "device": self.device, "dtype": self.dtype, "ok": self.ok,
                      "max_logprob_diff": self.max_logprob_diff, "prompts": self.prompts,
                      "figures": self.figures, "timing": self.timing, "residency": self.residency,
                      "bisect": self.bisect})

    def __repr__(self) -> str:
        from hfvllm_lab.render.text import comparison_text

        return comparison_text(self)

    def _repr_html_(self) -> str:
        from hfvllm_lab.render.html import comparison_html

        return comparison_html(self)

    def plot(self, phase: str = "decode"):
        from hfvllm_lab.render.plots import plot_comparison

        return plot_comparison(self, phase=phase)
