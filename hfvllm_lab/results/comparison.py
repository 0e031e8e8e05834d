"""The HF-native path against the vLLM path on the same prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.parity import TokenParity
from hfvllm_lab.results._base import Shown, frame, plain
from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.teacher import TeacherForced, Verdict
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
    # Reduced precision: RMS error against float32 relative to its RMS, and transformers' own
    # error in the same dtype at the same module (the noise the row is judged against).
    relative_error: float | None = None
    noise: float | None = None


@dataclass(repr=False)
class BisectResult(Shown):
    """Per-module hidden-state differences of one prefill, in execution order."""

    prompt: str
    tolerance: float
    rows: list[ModuleDiff] = field(default_factory=list)
    first_divergent: str | None = None
    note: str = ""
    # "absolute" (float32: max diff within tolerance x RMS) or "noise" (reduced precision);
    # "tokenization differs" when the paths saw different prompt ids and nothing was compared.
    mode: str = "absolute"

    def to_frame(self):
        return frame([plain(r) for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return plain({"prompt": self.prompt, "tolerance": self.tolerance, "rows": self.rows,
                      "first_divergent": self.first_divergent, "note": self.note, "mode": self.mode})


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


@dataclass(repr=False)
class Comparison(Shown):
    model: str
    device: str
    dtype: str
    prompts: list[PromptComparison] = field(default_factory=list)
    figures: dict[str, PathFigures] = field(default_factory=dict)  # "hf" / "vllm"
    timing: dict[str, LayerTiming] = field(default_factory=dict)  # "hf" / "vllm"
    residency: str = ""  # "sequential" or "both resident", with why
    bisect: BisectResult | None = None
    teacher: TeacherForced | None = None  # teacher-forced distributions and the noise floor
    dtype_reason: str = ""  # why this dtype ran (requested, or what "auto" followed)
    mode: str = ""  # the engine's mode: "inspect" (eager, per-layer probes) or "fast" (compiled)

    @property
    def tokenization_agrees(self) -> bool:
        return all(p.hf.prompt_token_ids == p.vllm.prompt_token_ids for p in self.prompts)

    @property
    def verdict(self) -> Verdict:
        """float32: free-running parity and the teacher-forced bound; reduced precision: the
        teacher-forced verdict against the measured noise floor (free-running divergence at a
        near-tie is reported, not decisive)."""
        if not self.tokenization_agrees:
            bad = [i for i, p in enumerate(self.prompts) if p.hf.prompt_token_ids != p.vllm.prompt_token_ids]
            return Verdict("tokenization differs", None, "prompt token ids must be identical on both paths",
                           f"prompt(s) {', '.join(map(str, bad))} were tokenized differently by the two paths")
        parity_ok = all(p.parity.ok for p in self.prompts)
        failed = next((f"prompt {i}: {p.parity.reason}" for i, p in enumerate(self.prompts) if not p.parity.ok), "")
        teacher = self.teacher.verdict if self.teacher is not None else None
        if teacher is None:
            return Verdict("pass" if parity_ok else "fail", None, "free-running greedy parity", failed or "identical")
        if teacher.status in ("pass", "fail") and not parity_ok:
            return Verdict("fail", None, teacher.rule, f"free-running: {failed}; teacher-forced: {teacher.reason}")
        from hfvllm_lab.rules import with_module_caveat

        module, ratio = self._bisect_beyond()
        return with_module_caveat(teacher, module, ratio)

    def _bisect_beyond(self) -> tuple[str | None, float | None]:
        """The first module bisect found beyond its tolerance or noise, and by how much (noise mode)."""
        if self.bisect is None or self.bisect.first_divergent is None:
            return None, None
        row = next((r for r in self.bisect.rows if r.module == self.bisect.first_divergent), None)
        ratio = (row.relative_error / max(row.noise, 1e-12)
                 if row is not None and row.relative_error is not None and row.noise else None)
        return self.bisect.first_divergent, ratio

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    @property
    def max_logprob_diff(self) -> float:
        diffs = [d for p in self.prompts for d in p.logprob_diffs if d is not None]
        return max(diffs, default=0.0)

    def to_frame(self):
        """One row per prompt: free-running parity, and the teacher-forced KL of the judged path."""
        rows = []
        judged = self.teacher.judged if self.teacher is not None else None
        for i, p in enumerate(self.prompts):
            kls = judged.kl_per_position[i] if judged is not None and i < len(judged.kl_per_position) else []
            rows.append(dict(prompt=p.prompt, hf_tokens=p.hf.token_ids, vllm_tokens=p.vllm.token_ids,
                             prompt_ids_agree=p.hf.prompt_token_ids == p.vllm.prompt_token_ids,
                             ok=p.parity.ok, first_divergence=p.parity.first_divergence, reason=p.parity.reason,
                             max_logprob_diff=max((d for d in p.logprob_diffs if d is not None), default=0.0),
                             max_prompt_logprob_diff=p.parity.max_prompt_logprob_diff,
                             kl_mean=sum(kls) / len(kls) if kls else None, kl_max=max(kls, default=None)))
        return frame(rows)

    def to_dict(self) -> dict[str, Any]:
        return plain({"model": self.model, "device": self.device, "dtype": self.dtype,
                      "dtype_reason": self.dtype_reason, "mode": self.mode, "ok": self.ok, "verdict": self.verdict,
                      "max_logprob_diff": self.max_logprob_diff, "prompts": self.prompts,
                      "figures": self.figures, "timing": self.timing, "residency": self.residency,
                      "teacher": self.teacher, "bisect": self.bisect})

    def plot(self, phase: str = "decode"):
        from hfvllm_lab import display

        return display.plot(self, phase=phase)

    def plot_kl(self, ax=None):
        """Teacher-forced KL per position, the noise floor drawn as a band."""
        if self.teacher is None:
            raise ValueError("this comparison has no teacher-forced scores")
        return self.teacher.plot(ax=ax)


def tokenization_agrees(reference: list[Generation], judged: list[Generation]) -> bool:
    return all(r.prompt_token_ids == j.prompt_token_ids for r, j in zip(reference, judged))
