"""A RankReport side by side: one column per rank (text and HTML), each rank's own log and memory below."""

from __future__ import annotations

from html import escape

from hfvllm_lab.render.format import ACTION_ORDER, fmt_bytes, fmt_seconds, ordered_keys, text_table
from hfvllm_lab.render.html import _p, _wrap, table

RULE = "=" * 100


def rank_columns(report) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): the facts of every rank side by side, one column per rank."""
    rows = report.rows
    headers = ["", *[f"rank {r.rank}" for r in rows]]
    facts = [
        ["tensor rank", *[f"{r.tensor_rank}/{r.tensor_size}" for r in rows]],
        ["pipeline rank", *[f"{r.pipeline_rank}/{r.pipeline_size}" for r in rows]],
        ["decoder layers", *[r.layers_text for r in rows]],
        ["parameters", *[fmt_bytes(r.param_bytes) for r in rows]],
        ["  held whole by each tensor rank", *[fmt_bytes(r.replicated_bytes) for r in rows]],
        *([["  a tied head's own copy", *[fmt_bytes(r.tied_copy_bytes) for r in rows]]]
          if any(r.tied_copy_bytes for r in rows) else []),
        ["KV cache", *[fmt_bytes(r.kv_cache_bytes) for r in rows]],
        ["process", *[fmt_bytes(r.process_bytes) for r in rows]],
    ]
    actions = ordered_keys({a for r in rows for a in r.actions}, ACTION_ORDER)
    facts += [[f"records {a}", *[str(r.actions.get(a, 0)) for r in rows]] for a in actions]
    phases = ordered_keys({p for r in rows for p in r.step_seconds}, ("prefill", "decode"))
    facts += [[f"{p} step", *[fmt_seconds(r.step_seconds.get(p)) for r in rows]] for p in phases]
    return headers, facts


def total_line(report) -> str:
    return (f"whole model from the ranks: {fmt_bytes(report.model_param_bytes())} of parameters (every rank's shards, "
            "plus what a stage's tensor ranks each hold whole counted once, less a tied head's copy)")


def rank_report_text(report) -> str:
    lines = [RULE, f"RankReport: {report.model} ({report.backend} backend), {report.layout}, {report.executor} executor",
             RULE]
    headers, facts = rank_columns(report)
    lines.append(text_table(headers, facts, "l" + "r" * (len(headers) - 1)))
    lines.append(total_line(report))
    lines += [f"note: {n}" for n in report.notes]
    if not report.timing:
        lines.append("step times: run profile() to time every rank")
    lines.append("each rank's own log, memory and timing: report.replacements[i], report.memory[i], report.timing[i]")
    return "\n".join(lines)


def rank_report_html(report) -> str:
    headers, facts = rank_columns(report)
    body = [table(headers, facts, "l" + "r" * (len(headers) - 1), css_class="hvl-ranks"), _p(total_line(report))]
    body += [_p(f"note: {n}") for n in report.notes]
    columns = []
    for i, row in enumerate(report.rows):
        parts = [f'<div class="hvl-rank-title" style="font-weight:700">{escape(row.label)}</div>']
        if i < len(report.memory):
            parts.append(report.memory[i]._repr_html_())
        if i < len(report.replacements):
            parts.append(f"<details><summary>replacement log</summary>{report.replacements[i]._repr_html_()}</details>")
        if i < len(report.timing):
            parts.append(f"<details><summary>timing</summary>{report.timing[i]._repr_html_()}</details>")
        columns.append(f'<div class="hvl-rank" style="flex:1;min-width:320px">{"".join(parts)}</div>')
    body.append(f'<div class="hvl-rank-columns" style="display:flex;gap:12px;align-items:flex-start">'
                f'{"".join(columns)}</div>')
    return _wrap("ranks", f"RankReport: {report.model} ({report.backend} backend), {report.layout}, "
                          f"{report.executor} executor", body)


__all__ = ["rank_report_html", "rank_report_text"]
