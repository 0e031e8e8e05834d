"""Views of a ReferenceComparison: llama.cpp-style statistics, where the model drifts most, and plots."""

from __future__ import annotations

from html import escape

from hfvllm_lab.render.format import fmt_sci, text_table

STAT_HEADERS = ["", "value"]


def stat_rows(r) -> list[list[str]]:
    return [
        ["KL mean", fmt_sci(r.kl_mean, 3)], ["KL median", fmt_sci(r.kl_median, 3)], ["KL p99", fmt_sci(r.kl_p99, 3)],
        ["KL max", fmt_sci(r.kl_max, 3)], ["same top token", f"{r.top1_agreement:.2%}"],
        ["perplexity (model)", f"{r.ppl:.4f}"], ["perplexity (reference)", f"{r.ppl_reference:.4f}"],
        ["delta perplexity", f"{r.delta_ppl:+.4f}  (95 %: {r.delta_ppl_low:+.4f} .. {r.delta_ppl_high:+.4f})"],
    ]


def drift_rows(r, count: int = 8) -> list[list[str]]:
    return [[d.module, fmt_sci(d.relative_error, 3)] for d in r.worst_modules(count)]


def heading(r) -> str:
    return (f"ReferenceComparison: {r.model} against {r.reference}, {r.tokens} positions scored by {r.engine}: "
            f"KL mean {r.kl_mean:.3g}, same top token {r.top1_agreement:.1%}, delta ppl {r.delta_ppl:+.3f}")


def reference_text(r) -> str:
    from hfvllm_lab.render.text import RULE, THIN

    lines = [RULE, heading(r), RULE, text_table(STAT_HEADERS, stat_rows(r), align="lr")]
    if r.drift:
        lines += [THIN, "Largest drift (relative RMS error of a module's output against the reference's, one prompt):",
                  text_table(["module", "relative error"], drift_rows(r), align="lr")]
    lines += [f"note: {n}" for n in r.notes]
    lines.append(RULE)
    return "\n".join(lines)


def reference_html(r) -> str:
    from hfvllm_lab.render.html import _p, _wrap, table

    body = [table(STAT_HEADERS, stat_rows(r), align="lr", css_class="hvl-reference-stats")]
    if r.drift:
        body.append(_p("Largest drift (relative RMS error of a module's output against the reference's, one prompt):"))
        body.append(table(["module", "relative error"], drift_rows(r), align="lr", css_class="hvl-drift"))
    body.extend(_p(f"note: {n}") for n in r.notes)
    return _wrap("reference", escape(heading(r)), body)


def plot_reference(r, ax=None):
    """KL per position of the text (left) and the drift of every module in execution order (right)."""
    from hfvllm_lab.render.plots import _figure

    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.2), layout="constrained")
        left, right = fig.subplots(1, 2)
    else:
        fig, left = _figure(ax, (5, 3))
        right = None
    left.plot(range(len(r.kl_per_position)), r.kl_per_position, color="#1e88e5", linewidth=0.8)
    left.set_yscale("log")
    left.set_xlabel("position in the text")
    left.set_ylabel("KL(reference || model)")
    left.set_title(f"{r.model} vs {r.reference}", fontsize=9)
    if right is not None:
        right.plot(range(len(r.drift)), [d.relative_error for d in r.drift], color="#e53935", marker=".",
                   linewidth=0.8)
        right.set_xlabel("module, in execution order")
        right.set_ylabel("relative error vs the reference")
        right.set_yscale("log")
    return fig


__all__ = ["plot_reference", "reference_html", "reference_text"]
