"""Self-contained HTML fragments (inline styles, no JS) for `_repr_html_`, and a standalone report.

Every user-provided string goes through `html.escape`; elements carry `hvl-*` CSS classes so tests
and custom stylesheets can find them, while the inline `style` attributes keep them readable anywhere.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape

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
    NESTED_KINDS,
    STATUS_COLORS,
    STATUS_ORDER,
    UNKNOWN_COLOR,
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
    prompt_max_diff,
    step_cells,
    timing_phases,
)

FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px"
TABLE = "border-collapse:collapse;margin:4px 0 8px 0"
TH = "padding:2px 8px;border-bottom:1px solid #888;text-align:left;font-weight:600"
TD = "padding:2px 8px;border-bottom:1px solid #ddd;vertical-align:top"
DIVERGE = "background:#ffcdd2;color:#b71c1c;font-weight:700"
OK_BADGE = "background:#c8e6c9;color:#1b5e20"
FAIL_BADGE = "background:#ffcdd2;color:#b71c1c"
ROW_STYLES = {"hvl-diverge": DIVERGE, "hvl-over": "color:#b71c1c", "hvl-fallback": "background:#fff3e0"}


class Raw(str):
    """A string that is already HTML: `table` does not escape it."""


def _cell(value: object) -> str:
    return value if isinstance(value, Raw) else escape(str(value))


def _badge(text: str, css_class: str, style: str) -> Raw:
    return Raw(f'<span class="hvl-badge {css_class}" style="padding:0 6px;border-radius:3px;{style}">'
               f"{escape(text)}</span>")


def status_badge(status: str) -> Raw:
    fg, bg = STATUS_COLORS.get(status, UNKNOWN_COLOR)
    return _badge(status, f"hvl-{escape(status)}", f"color:{fg};background:{bg}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None,
          row_classes: Sequence[str] | None = None, css_class: str = "") -> str:
    """A `<table>`; `align` holds `l`/`r` per column; cells are escaped unless `Raw`."""
    align = (align or "").ljust(len(headers), "l")
    head = "".join(f'<th style="{TH}{";text-align:right" if a == "r" else ""}">{escape(h)}</th>'
                   for h, a in zip(headers, align))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        style = f' style="{ROW_STYLES[row_classes[i]]}"' if row_classes and row_classes[i] in ROW_STYLES else ""
        cells = "".join(f'<td style="{TD}{";text-align:right" if a == "r" else ""}">{_cell(c)}</td>'
                        for c, a in zip(row, align))
        body.append(f"<tr{cls}{style}>{cells}</tr>")
    return (f'<table class="hvl-table {css_class}" style="{TABLE}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _wrap(kind: str, title: str, body: list[str]) -> str:
    return (f'<div class="hvl hvl-{kind}" style="{FONT}"><div class="hvl-title" '
            f'style="font-weight:700;margin:4px 0">{escape(title)}</div>{"".join(body)}</div>')


def _p(text: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<div{cls} style="margin:2px 0">{escape(text)}</div>'


def _legend() -> str:
    return '<div class="hvl-legend" style="margin:4px 0">' + " ".join(status_badge(s) for s in STATUS_ORDER) + "</div>"


def _tree_line(node) -> str:
    leaf = node.name.rsplit(".", 1)[-1] if node.depth > 0 else node.name
    reason = f' <span style="color:#666">&mdash; {escape(node.reason)}</span>' if node.reason else ""
    cls = escape(class_label(node.original_class, node.module_class, arrow="\u2192"))
    return (f'{status_badge(node.status)} <b title="{escape(node.name)}">{escape(leaf)}</b> '
            f'<span style="color:#555">{cls}</span> <span style="color:#888">{fmt_count(node.parameters)} params'
            f"</span>{reason}")


def tree_html(nodes, open_depth: int = 2) -> str:
    """Nested `<details>` per module with children (open down to `open_depth`), `<div>` per leaf."""
    out: list[str] = []
    stack: list[int] = []  # depths of open <details>
    for i, node in enumerate(nodes):
        while stack and stack[-1] >= node.depth:
            stack.pop()
            out.append("</div></details>")
        has_children = i + 1 < len(nodes) and nodes[i + 1].depth > node.depth
        line = _tree_line(node)
        css = f"hvl-node hvl-node-{escape(node.status)}"
        if has_children:
            opened = " open" if node.depth < open_depth else ""
            out.append(f'<details class="{css}"{opened}><summary>{line}</summary>'
                       f'<div style="margin-left:1.4em;border-left:1px dotted #bbb;padding-left:4px">')
            stack.append(node.depth)
        else:
            out.append(f'<div class="{css}" style="margin-left:1.1em">{line}</div>')
    out.extend("</div></details>" for _ in stack)
    return "".join(out)


def replacement_log_html(log) -> str:
    """Header, counts per original class, kept records, and the colour-coded collapsible tree."""
    body = [_p(f"HF class: {log.hf_class}")]
    if log.model_class:
        body.append(_p(f"built by vLLM: {log.model_class}"))
    body += [_p(f"{key}: {value}", "hvl-option") for key, value in log.options.items()]
    if log.note:
        body.append(_p(f"note: {log.note}", "hvl-note"))
    if log.records:
        actions, rows = count_rows(log)
        body.append(table(["original class", *actions, "total", "becomes"],
                          [[c] + [per.get(a, 0) for a in actions] + [total, new or "-"]
                           for c, per, total, new in rows],
                          align="l" + "r" * (len(actions) + 1) + "l", css_class="hvl-counts"))
        kept = log.by_action("kept")
        if kept:
            body.append(_p(f"Kept ({len(kept)}):"))
            body.append(table(["module", "kind", "class", "reason"],
                              [[r.name, r.kind, r.original_class, fmt_opt(r.reason)] for r in kept],
                              css_class="hvl-kept-records"))
        unfused = not_fused_rows(log)
        if unfused:
            body.append(_p(not_fused_heading(unfused)))
            body.append(table(["reason", "modules", "first"], unfused, align="lrl", css_class="hvl-not-fused"))
        heading, shards = shard_rows(log)
        if shards:
            body.append(_p(heading))
            body.append(table(["module", "HF shape", "this rank"], shards, align="lrr", css_class="hvl-shards"))
    else:
        body.append(_p("no replacement candidates recorded"))
    if log.tree:
        body.append(f'<details class="hvl-tree" open><summary>Module tree ({len(log.tree)} modules)</summary>'
                    f"{_legend()}{tree_html(log.tree)}</details>")
    return _wrap("replacements", f"ReplacementLog: {log.model} ({log.backend} backend){_on_rank(log)}", body)


def memory_html(report) -> str:
    rows = [[p.phase, fmt_bytes(p.param_bytes), fmt_bytes(p.meta_bytes), fmt_bytes(p.kv_cache_bytes),
             fmt_bytes(p.process_bytes), fmt_opt(p.source), fmt_seconds(p.seconds)] for p in report.phases]
    headers = ["phase", "params [tensors]", "on meta [tensors]", "kv cache [tensors]", "process",
               "process source", "seconds"]
    if any(p.state_cache_bytes for p in report.phases):  # a stateful model: its state cache beside the KV
        for row, p in zip(rows, report.phases):
            row.insert(4, fmt_bytes(p.state_cache_bytes))
        headers.insert(4, "state cache [tensors]")
    body = [table(headers, rows, align="lrrr" + "r" * (len(headers) - 6) + "lr", css_class="hvl-phases"),
            _p("[tensors]: exact tensor bytes; process: as its source column says"),
            _p(f"eager init would allocate: {fmt_bytes(report.eager_param_bytes)} [tensors]; "
               f"meta saving: {fmt_bytes(report.meta_saving_bytes)}")]
    if report.note:
        body.append(_p(f"note: {report.note}", "hvl-note"))
    return _wrap("memory", f"MemoryReport: {report.model} on {report.device} ({report.backend} backend){_on_rank(report)}", body)


def attention_html(report) -> str:
    rows = [[r.layer, r.module, r.implementation, r.calls,
             "/".join(fmt_opt(x) for x in (r.num_heads, r.num_kv_heads, r.head_size)),
             fmt_opt(r.sliding_window), r.fallbacks, r.fallback_reason] for r in report.rows]
    classes = ["hvl-fallback" if r.fallbacks else "" for r in report.rows]
    body = [_p(f"reason: {fmt_opt(report.reason)}"), _p(f"forward calls covered: {report.forward_calls}"),
            table(["layer", "module", "implementation", "calls", "heads/kv/size", "window", "fallbacks",
                   "fallback reason"], rows, align="rllrrrrl", row_classes=classes, css_class="hvl-layers"),
            table(["implementation", "calls"], list(report.implementations().items()), align="lr",
                  css_class="hvl-impls"),
            _p(f"fallbacks: {report.total_fallbacks}")]
    if report.note:
        body.append(_p(f"note: {report.note}", "hvl-note"))
    return _wrap("attention", f"AttentionReport: {report.path} path, selected {report.selected}", body)


def timing_html(timing) -> str:
    body = [_p(f"timer: {timing.timer}; warmup steps excluded: {timing.warmup_steps}")]
    for phase in timing_phases(timing):
        step = timing.step_seconds.get(phase)
        rows = [[Raw("&nbsp;&nbsp;" + escape(r.module)) if r.kind in NESTED_KINDS else r.module, r.kind, r.calls,
                 fmt_seconds(r.mean_seconds), fmt_pct(r.mean_seconds, step)] for r in timing.phase_rows(phase)]
        top, overhead = timing.top_level_seconds(phase), timing.probe_overhead_seconds(phase)
        body += [f'<div class="hvl-phase hvl-phase-{escape(phase)}" style="margin-top:6px"><b>{escape(phase)}</b>: '
                 f"{timing.steps[phase]} steps averaged, mean step {fmt_seconds(step)}</div>",
                 table(["module", "kind", "calls", "mean", "of step"], rows, align="llrrr", css_class="hvl-timing"),
                 _p(f"top-level sum {fmt_seconds(top)} = {fmt_pct(top, step)} of step; probe overhead est. "
                    f"{fmt_seconds(overhead)} per step ({fmt_pct(overhead, step)})")]
    if not timing_phases(timing):
        body.append(_p("no timed steps"))
    return _wrap("timing", f"LayerTiming: {timing.path} path on {timing.device}{_on_rank(timing)}", body)


def bisect_html(bisect) -> str:
    if bisect.mode == "noise":
        headers, align = ["module", "rel. error", "HF noise", "max |diff|", ""], "lrrrl"
        rows = [[r.module, fmt_sci(r.relative_error, 2), fmt_sci(r.noise, 2), fmt_sci(r.max_abs_diff, 2),
                 "ok" if r.ok else "over"] for r in bisect.rows]
    else:
        headers, align = ["module", "max |diff|", ""], "lrl"
        rows = [[r.module, fmt_sci(r.max_abs_diff, 2), "ok" if r.ok else "over"] for r in bisect.rows]
    classes = ["hvl-diverge" if r.module == bisect.first_divergent else ("hvl-over" if not r.ok else "")
               for r in bisect.rows]
    body = [_p(f"prompt: {bisect.prompt!r}"), _p(bisect_summary(bisect)),
            table(headers, rows, align=align, row_classes=classes, css_class="hvl-bisect")]
    if bisect.note:
        body.append(_p(f"note: {bisect.note}", "hvl-note"))
    return _wrap("bisect-result", "Bisect", body)


def _steps_table(pc) -> str:
    """Horizontal table: step / HF / vLLM / |d logprob| rows, the first divergent column highlighted."""
    cells, at = step_cells(pc), pc.parity.first_divergence
    rows = []
    for key, label in (("step", "step"), ("hf", "HF"), ("vllm", "vLLM"), ("diff", "|\u0394 logprob|")):
        tds = []
        for i, c in enumerate(cells[key]):
            mark = f' class="hvl-diverge" style="{TD};{DIVERGE}"' if i == at else f' style="{TD}"'
            tds.append(f"<td{mark}>{escape(c)}</td>")
        rows.append(f'<tr class="hvl-row-{key}"><th style="{TH}">{escape(label)}</th>{"".join(tds)}</tr>')
    return (f'<div style="overflow-x:auto"><table class="hvl-table hvl-steps" style="{TABLE};text-align:right">'
            f"{''.join(rows)}</table></div>")


def comparison_html(cmp) -> str:
    """Per prompt: verdict, tokens side by side with the divergent step highlighted, per-step logprob
    diffs; then figures, step times, residency and the bisect table."""
    body = []
    if cmp.dtype_reason:
        body.append(_p(f"dtype: {cmp.dtype} ({cmp.dtype_reason})"))
    if cmp.mode:
        body.append(_p(f"mode: {cmp.mode}"))
    if cmp.teacher is not None:
        v = cmp.verdict
        badge = _badge(v.label, "hvl-ok" if v.ok else "hvl-fail", OK_BADGE if v.ok else FAIL_BADGE)
        body.append(f'<div class="hvl-verdict" style="margin:4px 0">{badge} {escape(verdict_line(cmp))}</div>')
        body.append(_p(f"rule: {v.rule}"))
        body.append(_p(teacher_heading(cmp.teacher)))
        body.append(table(TEACHER_HEADERS, teacher_rows(cmp.teacher), align=TEACHER_ALIGN, css_class="hvl-teacher"))
        if part_verdicts(cmp.teacher):
            body.append(_p(f"judged parts: {part_verdicts(cmp.teacher)}", "hvl-parts"))
        body.extend(_p(f"note: {n}") for n in cmp.teacher.notes)
    for i, pc in enumerate(cmp.prompts):
        ok = pc.parity.ok
        verdict = _badge("ok" if ok else "mismatch", "hvl-ok" if ok else "hvl-fail", OK_BADGE if ok else FAIL_BADGE)
        body.append(f'<div class="hvl-prompt" style="margin-top:8px"><div>prompt {i}: <b>{escape(repr(pc.prompt))}'
                    f"</b> {verdict} {escape(pc.parity.reason)}</div>")
        body.append(_p(f"first divergence: {fmt_opt(pc.parity.first_divergence)}; max logprob diff "
                       f"{fmt_sci(prompt_max_diff(pc))}; max prompt logprob diff "
                       f"{fmt_sci(pc.parity.max_prompt_logprob_diff)}"))
        body.append(_steps_table(pc))
        body.append(_p(f"HF text: {pc.hf.text!r}") + _p(f"vLLM text: {pc.vllm.text!r}") + "</div>")
    if cmp.figures:
        body.append(table(FIGURE_HEADERS, figure_rows(cmp), align=FIGURE_ALIGN, css_class="hvl-figures"))
    for phase in ("prefill", "decode"):
        steps = {k: t.step_seconds[phase] for k, t in cmp.timing.items() if phase in t.step_seconds}
        if steps:
            body.append(_p(f"mean {phase} step: " + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in steps.items())))
    body.append(_p(f"residency: {fmt_opt(cmp.residency)}", "hvl-residency"))
    if cmp.bisect is not None:
        body.append(bisect_html(cmp.bisect))
    title = (f"Comparison: {cmp.model} on {cmp.device} ({cmp.dtype}): {cmp.verdict.label}, "
             f"max logprob diff {fmt_sci(cmp.max_logprob_diff)}")
    return _wrap("comparison", title, body)


def session_html(session) -> str:
    """A small card with what a session was opened with; reads plain attributes only (no engine calls)."""
    closed = getattr(session, "closed", False)
    fields = [("model", "model_name"), ("device", "device"), ("dtype", "dtype"), ("backend", "backend"),
              ("built class", "model_class"), ("mode", "mode"), ("max_model_len", "max_model_len"),
              ("attention", "attention_path"),
              ("HF attention", "hf_attention")]
    rows = [[label, fmt_opt(getattr(session, attr, None))] for label, attr in fields]
    settings = getattr(session, "settings", None)
    if settings is not None and settings.layout.world > 1:
        rows.append(["parallel", settings.layout.describe()])
    rows += [["engine argument", note] for note in getattr(session, "engine_notes", None) or []]
    state = (_badge("closed", "hvl-fail", FAIL_BADGE) if closed else _badge("open", "hvl-ok", OK_BADGE))
    body = [table(["", ""], rows, css_class="hvl-session-fields"), f'<div style="margin:2px 0">state: {state}</div>',
            _p("see .replacements, .memory, .attention, .profile(), .compare(), .bisect(), .dashboard()")]
    return _wrap("session", f"Session: {fmt_opt(getattr(session, 'model_name', None))}", body)


def report_html(title: str, sections: list[tuple[str, str]]) -> str:
    """One standalone HTML document: `sections` are (heading, HTML fragment) pairs."""
    parts = [f'<section class="hvl-section" style="margin:16px 0"><h2 style="font-size:16px">{escape(name)}</h2>'
             f"{fragment}</section>" for name, fragment in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title></head>\n"
            f'<body style="font-family:system-ui,sans-serif;margin:16px 24px;color:#222">'
            f'<h1 style="font-size:20px">{escape(title)}</h1>\n' + "\n".join(parts) + "\n</body></html>\n")


def figure_to_img_tag(fig, alt: str = "figure", dpi: int = 100) -> str:
    """Embed a matplotlib figure as a base64 PNG `<img>` (no pyplot needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="hvl-figure" alt="{escape(alt)}" src="data:image/png;base64,{data}"/>'


def generation_html(gen) -> str:
    """One prompt's generation: tokens with the logprob each was chosen with."""
    rows = [[step, token, fmt_sci(top.get(token)) if top else "-"]
            for step, (token, top) in enumerate(zip(gen.token_ids, gen.top_logprobs or [{}] * len(gen.token_ids)))]
    head = (f"<div><b>{escape(repr(gen.prompt))}</b> ({len(gen.prompt_token_ids)} prompt tokens) "
            f"&rarr; {escape(repr(gen.text))}</div>")
    return head + table(["step", "token", "logprob"], rows, align="rrr", css_class="hvl-generation")


def teacher_html(teacher) -> str:
    body = [_p(teacher_heading(teacher)),
            table(TEACHER_HEADERS, teacher_rows(teacher), align=TEACHER_ALIGN, css_class="hvl-teacher")]
    if teacher.verdict is not None:
        v = teacher.verdict
        badge = _badge(v.label, "hvl-ok" if v.ok else "hvl-fail", OK_BADGE if v.ok else FAIL_BADGE)
        body.append(f'<div class="hvl-verdict">{badge} {escape(v.reason)}</div>')
    body.extend(_p(f"note: {n}") for n in teacher.notes)
    return _wrap("teacher-forced", "Teacher-forced distributions", body)
