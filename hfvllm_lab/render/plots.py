"""Matplotlib figures for the result objects, built on `matplotlib.figure.Figure` (no pyplot state).

Each function takes an optional `ax` to draw into and returns the Figure; matplotlib is imported
only when a function runs.
"""

from __future__ import annotations

from hfvllm_lab.render.format import (
    ACTION_ORDER,
    STATUS_COLORS,
    UNKNOWN_COLOR,
    bytes_scale,
    fmt_bytes,
    fmt_seconds,
    ordered_keys,
    seconds_scale,
    timing_phases,
)
from hfvllm_lab.vocab import TOP_LEVEL

PATH_COLORS = {"hf": "#ff9800", "vllm": "#1e88e5"}


def _figure(ax, figsize: tuple[float, float]):
    """(figure, ax): a new Figure with one Axes, or the figure that owns `ax`."""
    if ax is not None:
        try:
            return ax.get_figure(root=True), ax
        except TypeError:  # matplotlib < 3.10
            return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _short(module: str) -> str:
    return module.removeprefix("model.")


def plot_replacement_counts(log, ax=None):
    """Bars per original class, stacked by action (replaced / tied / routed / kept)."""
    counts = log.counts()
    classes = sorted(counts, key=lambda c: (-sum(counts[c].values()), c))
    actions = ordered_keys({a for per in counts.values() for a in per}, ACTION_ORDER)
    fig, ax = _figure(ax, (max(4.0, 1.0 + 0.9 * len(classes)), 3.5))
    bottom = [0] * len(classes)
    for action in actions:
        heights = [counts[c].get(action, 0) for c in classes]
        ax.bar(range(len(classes)), heights, bottom=bottom, label=action,
               color=STATUS_COLORS.get(action, UNKNOWN_COLOR)[0], edgecolor="white")
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylabel("modules")
    ax.set_title(f"Replacement candidates: {log.model}")
    if actions:
        ax.legend(fontsize="small")
    return fig


def plot_memory(report, ax=None):
    """Two panels, because the exact tensor bytes (KiB..MiB on small models) vanish next to a process
    figure of hundreds of MiB on one axis: per phase, the exact tensor bytes (parameters and KV cache,
    stacked; the eager (non-meta) parameter bytes as a dashed line), and the process figure labelled
    with its source. With `ax`, only the tensor panel is drawn, into `ax`."""
    phases = report.phases
    nan = float("nan")
    x = list(range(len(phases)))
    labels = [p.phase for p in phases]
    if ax is not None:
        fig, ax_tensor = _figure(ax, (5.0, 3.5))
        ax_process = None
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(9.0, 2.2 * len(phases) + 3), 3.6), layout="constrained")
        ax_tensor, ax_process = fig.subplots(1, 2)

    # Tensor panel: exact bytes, params with the KV cache stacked on top.
    tensor_values = [(p.param_bytes or 0) + (p.kv_cache_bytes or 0) for p in phases]
    if report.eager_param_bytes is not None:
        tensor_values.append(report.eager_param_bytes)
    divisor, unit = bytes_scale(max(tensor_values, default=0))
    params = [p.param_bytes / divisor if p.param_bytes is not None else nan for p in phases]
    kv = [p.kv_cache_bytes / divisor if p.kv_cache_bytes is not None else 0.0 for p in phases]
    bottom = [0.0 if v != v else v for v in params]  # NaN (not measured) stacks from zero
    ax_tensor.bar(x, params, 0.6, label="params", color="#1e88e5")
    ax_tensor.bar(x, kv, 0.6, bottom=bottom, label="kv cache", color="#8e24aa")
    state = [(getattr(p, "state_cache_bytes", None) or 0) / divisor for p in phases]
    if any(state):  # stateful modules' slots live inside the cache pool: hatched over its bar
        ax_tensor.bar(x, state, 0.6, bottom=bottom, label="of it: state slots", color="none", hatch="//",
                      edgecolor="#ff8f00")
    if report.eager_param_bytes is not None:
        ax_tensor.axhline(report.eager_param_bytes / divisor, color="#e53935", linestyle="--", linewidth=1,
                          label="eager init params")
    for i, p in enumerate(phases):  # exact figures on the bars: small params stay readable next to the KV cache
        parts = [fmt_bytes(p.param_bytes)] if p.param_bytes is not None else []
        if p.kv_cache_bytes:
            parts.append(f"+{fmt_bytes(p.kv_cache_bytes)} kv")
        if parts:
            ax_tensor.annotate("\n".join(parts), (i, bottom[i] + kv[i]), xytext=(0, 2), textcoords="offset points",
                               ha="center", va="bottom", fontsize="x-small")
    ax_tensor.margins(y=0.2)
    ax_tensor.set_xticks(x, labels, rotation=30, ha="right")
    ax_tensor.set_ylabel(unit)
    ax_tensor.set_title(f"Exact tensor bytes: {report.model} on {report.device}", fontsize="medium")
    ax_tensor.legend(fontsize="small")

    if ax_process is not None:
        process_values = [p.process_bytes for p in phases if p.process_bytes is not None]
        pdiv, punit = bytes_scale(max(process_values, default=0))
        process = [p.process_bytes / pdiv if p.process_bytes is not None else nan for p in phases]
        sources = ", ".join(dict.fromkeys(p.source for p in phases if p.source)) or "unknown source"
        ax_process.bar(x, process, 0.6, label=f"process ({sources})", color="#9e9e9e")
        ax_process.set_xticks(x, labels, rotation=30, ha="right")
        ax_process.set_ylabel(punit)
        ax_process.set_title(f"Process figure ({sources})", fontsize="medium")
        if not process_values:
            ax_process.text(0.5, 0.5, "no process figure", ha="center", va="center",
                            transform=ax_process.transAxes)
        ax_process.legend(fontsize="small")
    return fig


def _timing_axis(ax, timing, phase: str) -> None:
    rows = timing.phase_rows(phase, TOP_LEVEL)
    scale, unit = seconds_scale(max((r.mean_seconds for r in rows), default=0.0))
    colors = ["#1e88e5" if r.kind == "layer" else "#8e24aa" for r in rows]
    ax.barh(range(len(rows)), [r.mean_seconds * scale for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), [_short(r.module) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"mean time per step ({unit})")
    step = timing.step_seconds.get(phase)
    ax.set_title(f"{timing.path} {phase}: step {fmt_seconds(step)}, "
                 f"top-level sum {fmt_seconds(timing.top_level_seconds(phase))}", fontsize="medium")


def plot_timing(timing, phase: str | None = None, ax=None):
    """Horizontal bars per top-level module (embedding, layers, final norm, LM head). Without
    `phase`: both phases side by side when both are present (one phase, decode preferred, into `ax`)."""
    present = timing_phases(timing) or ordered_keys({r.phase for r in timing.rows}, ("prefill", "decode"))
    if phase is None and (ax is not None or len(present) < 2):
        phase = "decode" if "decode" in present else (present[0] if present else "decode")
    if phase is not None:
        n = len(timing.phase_rows(phase, TOP_LEVEL))
        fig, ax = _figure(ax, (6.0, max(2.5, 0.3 * n + 1)))
        _timing_axis(ax, timing, phase)
        return fig
    from matplotlib.figure import Figure

    n = max(len(timing.phase_rows(p, TOP_LEVEL)) for p in present)
    fig = Figure(figsize=(5.5 * len(present), max(2.5, 0.3 * n + 1)), layout="constrained")
    for a, p in zip(fig.subplots(1, len(present), squeeze=False)[0], present):
        _timing_axis(a, timing, p)
    return fig


def plot_comparison(cmp, phase: str = "decode"):
    """Two axes: top-level module times HF vs vLLM (rows matched by module name), and the per-step
    logprob diff of each prompt (the first divergence marked)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 4.5), layout="constrained")
    ax_time, ax_diff = fig.subplots(1, 2)
    paths = ordered_keys(list(cmp.timing), ("hf", "vllm"))
    per_path = {p: {r.module: r.mean_seconds for r in cmp.timing[p].phase_rows(phase, TOP_LEVEL)} for p in paths}
    modules = list(dict.fromkeys(m for p in reversed(paths) for m in per_path[p]))
    if modules:
        scale, unit = seconds_scale(max(v for d in per_path.values() for v in d.values()))
        height = 0.8 / max(len(paths), 1)
        for k, p in enumerate(paths):
            ys = [i - 0.4 + height * (k + 0.5) for i in range(len(modules))]
            ax_time.barh(ys, [per_path[p].get(m, float("nan")) * scale for m in modules], height,
                         label=p, color=PATH_COLORS.get(p, "#757575"))
        ax_time.set_yticks(range(len(modules)), [_short(m) for m in modules])
        ax_time.invert_yaxis()
        ax_time.set_xlabel(f"mean time per {phase} step ({unit})")
        ax_time.legend(fontsize="small")
    else:
        ax_time.text(0.5, 0.5, f"no {phase} timing", ha="center", va="center", transform=ax_time.transAxes)
    ax_time.set_title(f"Per-module time, {phase}", fontsize="medium")
    positive = False
    for i, pc in enumerate(cmp.prompts):
        diffs = [float("nan") if d is None else d for d in pc.logprob_diffs]
        positive |= any(d is not None and d > 0 for d in pc.logprob_diffs)
        (line,) = ax_diff.plot(range(len(diffs)), diffs, marker="o", markersize=3,
                               label=f"{i}: {pc.prompt[:24]!r}")
        if pc.parity.first_divergence is not None:
            ax_diff.axvline(pc.parity.first_divergence, color=line.get_color(), linestyle=":", linewidth=1)
    if positive:
        ax_diff.set_yscale("log")
    ax_diff.set_xlabel("generated step")
    ax_diff.set_ylabel("|HF - vLLM| logprob of chosen token")
    ax_diff.set_title("Per-step logprob diff (dotted: first divergence)", fontsize="medium")
    if cmp.prompts:
        ax_diff.legend(fontsize="small")
    fig.suptitle(f"{cmp.model}: HF vs vLLM on {cmp.device} ({cmp.dtype})")
    return fig


def plot_teacher_forced(teacher, ax=None):
    """Per-position KL(truth || path) of the judged path over every sequence, with the noise floor
    (the largest floor's KL at each position) drawn as a shaded band; prompts are separated and
    each continuation's positions shaded."""
    fig, ax = _figure(ax, (10, 3.2))
    judged = teacher.judged
    if judged is None:
        ax.text(0.5, 0.5, "no teacher-forced scores", ha="center", va="center", transform=ax.transAxes)
        return fig
    values = [v for row in judged.kl_per_position for v in row if v > 0]
    values += [v for f in teacher.floors for row in f.kl_per_position for v in row if v > 0]
    # Exact agreement (KL 0) is drawn at the bottom of the axis, not at 1e-300.
    eps = max(min(values, default=1e-8) / 5, 1e-10)
    x0 = 0
    for i, kls in enumerate(judged.kl_per_position):
        xs = list(range(x0, x0 + len(kls)))
        floor = [max((f.kl_per_position[i][j] for f in teacher.floors), default=0.0) for j in range(len(kls))]
        if teacher.floors:
            ax.fill_between(xs, eps, [max(v, eps) for v in floor], step="mid", color="#9e9e9e", alpha=0.35,
                            label="noise floor (largest floor per position)" if i == 0 else None)
        ax.plot(xs, [max(v, eps) for v in kls], marker=".", lw=1, color=PATH_COLORS["vllm"],
                label=judged.path if i == 0 else None)
        prompt_len = teacher.prompt_lengths[i] if i < len(teacher.prompt_lengths) else 0
        if prompt_len and prompt_len - 1 < len(kls):
            ax.axvspan(x0 + prompt_len - 1.5, x0 + len(kls) - 0.5, color="#fff3e0", alpha=0.6, lw=0,
                       label="greedy continuation" if i == 0 else None)
        if i:
            ax.axvline(x0 - 0.5, color="#616161", lw=0.8)
        x0 += len(kls)
    ax.set_yscale("log")
    ax.set_ylim(bottom=eps)
    ax.set_xlabel("position (prompts one after another)")
    ax.set_ylabel(f"KL vs {judged.against}")
    verdict = teacher.verdict
    ax.set_title(f"teacher-forced KL per position: {verdict.label if verdict else ''}"
                 + (f" ({verdict.ratio:.2f}x floor)" if verdict is not None and verdict.ratio is not None else ""))
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    return fig
