"""Per-layer timing split into prefill and decode steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.results._base import Shown, frame, plain, rows_of

# Phases and kinds of timed modules ("layer" rows contain their "attention"/"mlp"/"norm" rows),
# defined once in hfvllm_lab.vocab.
from hfvllm_lab.vocab import DECODE, MIXED, PREFILL, TOP_LEVEL  # noqa: F401
from hfvllm_lab.vocab import TIMED_KINDS as KINDS  # noqa: F401


@dataclass(frozen=True)
class ModuleTime:
    module: str
    kind: str
    layer: int | None
    phase: str
    calls: int
    mean_seconds: float  # mean time per step in which the module ran


@dataclass(repr=False)
class LayerTiming(Shown):
    path: str  # "vllm" or "hf"
    device: str
    timer: str  # "device events" or "perf_counter"
    rows: list[ModuleTime] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)  # phase -> steps averaged
    step_seconds: dict[str, float] = field(default_factory=dict)  # phase -> mean measured step time
    warmup_steps: int = 0  # steps run before timing and excluded
    hooks_per_step: dict[str, int] = field(default_factory=dict)
    probe_seconds_per_hook: float = 0.0  # measured cost of one start/stop pair of the probe
    mode: str = "inspect"  # "inspect": eager, per module; "fast": vLLM-compiled, whole steps (+ LM head) only
    rank: str = ""  # under tensor / pipeline parallel: which rank measured this ("" for one rank)
    # Under parallelism: every rank's own timing (the rows above merge the pipeline stages')
    ranks: list["LayerTiming"] = field(default_factory=list)

    def phase_rows(self, phase: str, kinds: tuple[str, ...] | None = None) -> list[ModuleTime]:
        return [r for r in self.rows if r.phase == phase and (kinds is None or r.kind in kinds)]

    def top_level_seconds(self, phase: str) -> float:
        """Sum of the non-overlapping rows of a phase (embedding, layers, final norm, LM head)."""
        return sum(r.mean_seconds for r in self.phase_rows(phase, TOP_LEVEL))

    def probe_overhead_seconds(self, phase: str) -> float:
        """Estimated cost of the probes in one step of `phase`."""
        return self.hooks_per_step.get(phase, 0) * self.probe_seconds_per_hook

    def to_frame(self):
        return frame(rows_of(self.rows))

    def to_chrome_trace(self) -> dict[str, Any]:
        """This timing in the Chrome trace-event format (Perfetto, chrome://tracing): see `chrome_trace`."""
        return chrome_trace([self])

    def save_chrome_trace(self, path) -> str:
        """Write `to_chrome_trace()` as JSON to `path`; returns the path."""
        return save_chrome_trace([self], path)

    def to_dict(self) -> dict[str, Any]:
        return plain({"path": self.path, "device": self.device, "timer": self.timer, "rows": self.rows,
                      "steps": self.steps, "step_seconds": self.step_seconds, "warmup_steps": self.warmup_steps,
                      "hooks_per_step": self.hooks_per_step, "probe_seconds_per_hook": self.probe_seconds_per_hook,
                      "mode": self.mode, "rank": self.rank, "ranks": [r.to_dict() for r in self.ranks]})

    def plot(self, phase: str | None = None, ax=None):
        from hfvllm_lab import display

        return display.plot(self, phase=phase, ax=ax)


# -- Chrome trace export -------------------------------------------------------------------------
_PATH_PIDS = {"hf": 1, "vllm": 2}
_GAP_US = 100.0  # between the mean steps of one track


def chrome_trace(timings) -> dict[str, Any]:
    """Several timings (e.g. a Comparison's `timing.values()`: hf and vllm) as one Chrome trace.

    One track per path (its own pid, thread "steps"). The probe keeps means, not every step, so
    each phase is drawn as its *mean step*: a "<phase> step" slice as long as the measured mean
    step, holding the top-level modules (embedding, layers, final norm, LM head) one after the
    other in execution order, each layer holding its attention / MLP / norm rows. Gaps between
    slices are time the probe did not attribute to a module. Durations are exact means; start
    times are a layout (children are clamped inside their parent so the nesting stays valid).
    """
    timings = list(timings)
    events: list[dict[str, Any]] = []
    for n, timing in enumerate(timings):
        pid = _PATH_PIDS.get(timing.path, 10 + n)
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": f"{timing.path} ({timing.device}, {timing.timer}, {timing.mode})"}})
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "steps"}})
        t = 0.0
        phases = [p for p in (PREFILL, DECODE, MIXED) if timing.phase_rows(p)]
        phases += sorted({r.phase for r in timing.rows} - set(phases))
        for phase in phases:
            t = _phase_events(events, timing, phase, pid, t) + _GAP_US
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"source": "hfvllm_lab", "layout": "mean step per phase",
                          "modes": {t.path: t.mode for t in timings}}}


def _slice(events, name, cat, pid, ts, dur, **args) -> None:
    events.append({"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": 1, "ts": round(ts, 3),
                   "dur": round(max(dur, 0.0), 3), "args": args})


def _phase_events(events, timing: "LayerTiming", phase: str, pid: int, t0: float) -> float:
    """Append one phase's mean step starting at `t0` (µs); return where it ends."""
    top = timing.phase_rows(phase, TOP_LEVEL)
    nested: dict[int | None, list[ModuleTime]] = {}
    for r in timing.phase_rows(phase):
        if r.kind not in TOP_LEVEL:
            nested.setdefault(r.layer, []).append(r)
    layer_order = {"embedding": 0, "layer": 1, "final_norm": 2, "lm_head": 3}
    top = sorted(top, key=lambda r: (layer_order.get(r.kind, 1), r.layer if r.layer is not None else -1))
    total = sum(r.mean_seconds for r in top) * 1e6
    step = max(timing.step_seconds.get(phase, 0.0) * 1e6, total)
    _slice(events, f"{phase} step", phase, pid, t0, step, phase=phase, steps=timing.steps.get(phase, 0),
           measured_step_us=timing.step_seconds.get(phase, 0.0) * 1e6, top_level_sum_us=total)
    t = t0
    for r in top:
        dur = r.mean_seconds * 1e6
        _slice(events, r.module, phase, pid, t, dur, kind=r.kind, layer=r.layer, calls=r.calls, phase=phase)
        if r.kind == "layer":
            inner = t
            for child in nested.get(r.layer, []):
                cdur = min(child.mean_seconds * 1e6, t + dur - inner)
                _slice(events, child.module, phase, pid, inner, cdur, kind=child.kind, layer=child.layer,
                       calls=child.calls, phase=phase, mean_us=child.mean_seconds * 1e6)
                inner += cdur
        t += dur
    return t0 + step


def save_chrome_trace(timings, path) -> str:
    """Write `chrome_trace(timings)` as JSON (open it in https://ui.perfetto.dev or chrome://tracing)."""
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps(chrome_trace(list(timings))))
    return str(path)
