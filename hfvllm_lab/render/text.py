"""Plain-text renderings (the `__repr__` of each result object): aligned, torchinfo-style tables."""

from __future__ import annotations

from hfvllm_lab.render.format import (
    _on_rank,
    shard_rows,
    TEACHER_ALIGN,
    TEACHER_HEADERS,
    part_verdicts,
    teacher_heading,
    teacher_rows,
    verdict_line,
    FIGURE_ALIGN,
    FIGURE_HEADERS,
    STATUS_ORDER,
    bisect_summary,
    class_label,
    count_rows,
    figure_rows,
    fmt_bytes,
    fmt_count,
    fmt_opt,
    fmt_pct,
    fmt_sci,
    fmt_seconds,
    not_fused_heading,
    not_fused_rows,
    ordered_keys,
    prompt_max_diff,
    quoted,
    status_legend,
    status_marker,
    step_cells,
    text_table,
    timing_module_label,
    timing_phases,
    wrapped_columns,
)

RULE = "=" * 100
THIN = "-" * 100


def _title(text: str) -> list[str]:
    return [RULE, text, RULE]


def replacement_log_text(log) -> str:
    """Header, candidates per original class by action, then the kept records with their reasons."""
    lines = _title(f"ReplacementLog: {log.model} ({log.backend} backend){_on_rank(log)}")
    lines.append(f"HF class: {log.hf_class}")
    if log.model_class:
        lines.append(f"built by vLLM: {log.model_class}")
    lines += [f"{key}: {value}" for key, value in log.options.items()]
    if log.note:
        lines.append(f"note: {log.note}")
    lines.append("")
    if not log.records:
        lines.append("no replacement candidates recorded")
        return "\n".join(lines)
    actions, rows = count_rows(log)
    lines.append(f"Candidates per original class ({len(log.records)} records):")
    table = [[cls] + [str(per.get(a, 0)) for a in actions] + [str(total), new or "-"]
             for cls, per, total, new in rows]
    totals = [sum(per.get(a, 0) for _, per, _, _ in rows) for a in actions]
    table.append(["total"] + [str(t) for t in totals] + [str(len(log.records)), ""])
    headers = ["original class", *actions, "total", "becomes"]
    lines.append(text_table(headers, table, align="l" + "r" * (len(actions) + 1) + "l"))
    kept = log.by_action("kept")
    lines.append("")
    if kept:
        lines.append(f"Kept ({len(kept)}):")
        lines.append(text_table(["module", "kind", "class", "reason"],
                                [[r.name, r.kind, r.original_class, fmt_opt(r.reason)] for r in kept]))
    else:
        lines.append("Kept: none")
    unfused = not_fused_rows(log)
    if unfused:
        lines.append("")
        lines.append(not_fused_heading(unfused))
        lines.append(text_table(["reason", "modules", "first"], unfused, align="lrl"))
    heading, shards = shard_rows(log)
    if shards:
        lines += ["", heading, text_table(["module", "HF shape", "this rank"], shards, align="lrr")]
    lines.append(RULE)
    return "\n".join(lines)


def replacement_tree_text(log) -> str:
    """Every module in tree order, indented by depth, with a status marker, class change,
    parameter count and, for kept modules, why."""
    lines = _title(f"Module tree: {log.model} ({log.backend} backend, {log.hf_class})")
    lines.append(f"legend: {status_legend()}")
    if not log.tree:
        lines.append("no module tree recorded")
        return "\n".join(lines)
    rows = []
    for node in log.tree:
        leaf = node.name.rsplit(".", 1)[-1] if node.depth > 0 else node.name
        rows.append([status_marker(node.status), "  " * node.depth + leaf,
                     class_label(node.original_class, node.module_class), fmt_count(node.parameters),
                     node.reason or ("(no reason recorded)" if node.status == "kept" else "")])
    lines.append(text_table(["", "module", "class", "params", "reason"], rows, align="lllrl", indent=""))
    counts: dict[str, int] = {}
    for node in log.tree:
        counts[node.status] = counts.get(node.status, 0) + 1
    keys = ordered_keys(list(counts), STATUS_ORDER)
    lines.append(THIN)
    lines.append(f"{len(log.tree)} modules: " + ", ".join(f"{counts[k]} {k}" for k in keys))
    lines.append(RULE)
    return "\n".join(lines)


def memory_text(report) -> str:
    """Phases with human-readable bytes, each figure labelled with its source."""
    lines = _title(f"MemoryReport: {report.model} on {report.device} ({report.backend} backend){_on_rank(report)}")
    if report.phases:
        rows = [[p.phase, fmt_bytes(p.param_bytes), fmt_bytes(p.meta_bytes), fmt_bytes(p.kv_cache_bytes),
                 fmt_bytes(p.process_bytes), fmt_opt(p.source), fmt_seconds(p.seconds)] for p in report.phases]
        headers = ["phase", "params [tensors]", "on meta [tensors]", "kv cache [tensors]",
                   "process", "process source", "seconds"]
        if any(p.state_cache_bytes for p in report.phases):  # a stateful model: its state cache beside the KV
            for row, p in zip(rows, report.phases):
                row.insert(4, fmt_bytes(p.state_cache_bytes))
            headers.insert(4, "state cache [tensors]")
        lines.append(text_table(headers, rows, align="lrrrrrlr" if len(headers) == 8 else "lrrrrlr"))
        lines.append("  [tensors]: exact tensor bytes; process: as its source column says")
    else:
        lines.append("no phases recorded")
    lines.append(THIN)
    lines.append(f"eager init would allocate: {fmt_bytes(report.eager_param_bytes)} [tensors]; "
                 f"meta saving: {fmt_bytes(report.meta_saving_bytes)}")
    if report.note:
        lines.append(f"note: {report.note}")
    lines.append(RULE)
    return "\n".join(lines)


def _heads(r) -> str:
    if r.num_heads is None and r.num_kv_heads is None and r.head_size is None:
        return "-"
    return "/".join(fmt_opt(x) for x in (r.num_heads, r.num_kv_heads, r.head_size))


def attention_text(report) -> str:
    """Selected path and why, per-layer table, totals per implementation, fallbacks."""
    lines = _title(f"AttentionReport: {report.path} path, selected {report.selected}")
    lines.append(f"reason: {fmt_opt(report.reason)}")
    lines.append(f"forward calls covered: {report.forward_calls}")
    if report.rows:
        rows = [[str(r.layer), r.module, r.implementation, str(r.calls), _heads(r), fmt_opt(r.sliding_window),
                 str(r.fallbacks)] for r in report.rows]
        lines.append(text_table(["layer", "module", "implementation", "calls", "heads/kv/size", "window",
                                 "fallbacks"], rows, align="rllrrrr"))
    else:
        lines.append("no attention layers recorded")
    lines.append(THIN)
    impls = report.implementations()
    lines.append("calls per implementation: " + (", ".join(f"{k} {v}" for k, v in impls.items()) or "-"))
    lines.append(f"fallbacks: {report.total_fallbacks}")
    for r in report.rows:
        if r.fallbacks or r.fallback_reason:
            lines.append(f"  layer {r.layer} ({r.module}): {r.fallbacks} - {fmt_opt(r.fallback_reason)}")
    if report.note:
        lines.append(f"note: {report.note}")
    lines.append(RULE)
    return "\n".join(lines)


def timing_text(timing) -> str:
    """Per phase: steps, mean step time, per-module table with share of the step, overhead."""
    lines = _title(f"LayerTiming: {timing.path} path on {timing.device}{_on_rank(timing)}")
    lines.append(f"timer: {timing.timer}; warmup steps excluded: {timing.warmup_steps}")
    phases = timing_phases(timing)
    if not phases:
        lines.append("no timed steps")
    for phase in phases:
        step = timing.step_seconds.get(phase)
        lines.append(THIN)
        lines.append(f"{phase}: {timing.steps[phase]} steps averaged, mean step {fmt_seconds(step)}")
        rows = [[timing_module_label(r), r.kind, str(r.calls), fmt_seconds(r.mean_seconds),
                 fmt_pct(r.mean_seconds, step)] for r in timing.phase_rows(phase)]
        if rows:
            lines.append(text_table(["module", "kind", "calls", "mean", "of step"], rows, align="llrrr"))
        top = timing.top_level_seconds(phase)
        overhead = timing.probe_overhead_seconds(phase)
        lines.append(f"  top-level sum {fmt_seconds(top)} = {fmt_pct(top, step)} of step {fmt_seconds(step)}")
        lines.append(f"  probe overhead est. {fmt_seconds(overhead)} per step "
                     f"({timing.hooks_per_step.get(phase, 0)} hooks x {fmt_seconds(timing.probe_seconds_per_hook)})"
                     f" = {fmt_pct(overhead, step)} of step")
    lines.append(RULE)
    return "\n".join(lines)


def _marked(cells: list[str], at: int | None) -> list[str]:
    return [f"[{c or '-'}]" if i == at else c for i, c in enumerate(cells)]


def bisect_text(bisect) -> str:
    """Summary line and per-module rows (the first divergent marked with `*`)."""
    lines = [f"bisect on {quoted(bisect.prompt, 60)}: {bisect_summary(bisect)}"]
    if bisect.note:
        lines.append(f"note: {bisect.note}")
    if bisect.rows and bisect.mode == "noise":
        rows = [["*" if r.module == bisect.first_divergent else "", r.module, fmt_sci(r.relative_error, 2),
                 fmt_sci(r.noise, 2), fmt_sci(r.max_abs_diff, 2), "ok" if r.ok else "OVER"] for r in bisect.rows]
        lines.append(text_table(["", "module", "rel. error", "HF noise", "max |diff|", ""], rows, align="llrrrl"))
    elif bisect.rows:
        rows = [["*" if r.module == bisect.first_divergent else "", r.module, fmt_sci(r.max_abs_diff, 2),
                 "ok" if r.ok else "OVER"] for r in bisect.rows]
        lines.append(text_table(["", "module", "max |diff|", ""], rows, align="llrl"))
    return "\n".join(lines)


def comparison_text(cmp) -> str:
    """Per prompt: tokens side by side with the first divergence in brackets, verdict and reason,
    logprob diffs; then the figures table, step times, residency and the bisect summary."""
    lines = _title(f"Comparison: {cmp.model} on {cmp.device} ({cmp.dtype}): {cmp.verdict.label}, "
                   f"max logprob diff {fmt_sci(cmp.max_logprob_diff)}")
    if cmp.dtype_reason:
        lines.append(f"dtype: {cmp.dtype} ({cmp.dtype_reason})")
    if cmp.mode:
        lines.append(f"mode: {cmp.mode}")
    if cmp.teacher is not None:
        lines.append(verdict_line(cmp))
        lines.append(f"rule: {cmp.verdict.rule}")
        lines.append(teacher_heading(cmp.teacher))
        lines.append(text_table(TEACHER_HEADERS, teacher_rows(cmp.teacher), align=TEACHER_ALIGN))
        if part_verdicts(cmp.teacher):
            lines.append(f"judged parts: {part_verdicts(cmp.teacher)}")
        lines.extend(f"note: {n}" for n in cmp.teacher.notes)
        lines.append(THIN)
    for i, pc in enumerate(cmp.prompts):
        at = pc.parity.first_divergence
        cells = step_cells(pc)
        lines.append(f"prompt {i}: {quoted(pc.prompt, 88)}")
        lines.append(f"  verdict: {'ok' if pc.parity.ok else 'MISMATCH'} - {pc.parity.reason}")
        lines.append(f"  first divergence: {fmt_opt(at)}; max logprob diff {fmt_sci(prompt_max_diff(pc))}; "
                     f"max prompt logprob diff {fmt_sci(pc.parity.max_prompt_logprob_diff)}")
        lines.append(wrapped_columns([("step", _marked(cells["step"], at)), ("hf", _marked(cells["hf"], at)),
                                      ("vllm", _marked(cells["vllm"], at)),
                                      ("|dlogp|", _marked(cells["diff"], at))], indent="    "))
        lines.append(f"  hf text:   {quoted(pc.hf.text, 87)}")
        lines.append(f"  vllm text: {quoted(pc.vllm.text, 87)}")
        lines.append(THIN)
    if cmp.figures:
        lines.append("figures:")
        lines.append(text_table(FIGURE_HEADERS, figure_rows(cmp), align=FIGURE_ALIGN))
    for phase in ("prefill", "decode"):
        steps = {k: t.step_seconds[phase] for k, t in cmp.timing.items() if phase in t.step_seconds}
        if steps:
            lines.append(f"mean {phase} step: " + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in steps.items()))
    lines.append(f"residency: {fmt_opt(cmp.residency)}")
    if cmp.bisect is not None:
        lines.append(THIN)
        lines.append(bisect_text(cmp.bisect))
    lines.append(RULE)
    return "\n".join(lines)


def teacher_text(teacher) -> str:
    """The judged path and the floors against the truth, and the verdict."""
    lines = [teacher_heading(teacher), text_table(TEACHER_HEADERS, teacher_rows(teacher), align=TEACHER_ALIGN)]
    if teacher.verdict is not None:
        v = teacher.verdict
        lines.append(f"verdict: {v.label}" + (f" ({v.ratio:.2f}x)" if v.ratio is not None else "") + f" - {v.reason}")
    if part_verdicts(teacher):
        lines.append(f"judged parts: {part_verdicts(teacher)}")
    lines.extend(f"note: {n}" for n in teacher.notes)
    return "\n".join(lines)
