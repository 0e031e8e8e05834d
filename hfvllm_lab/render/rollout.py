"""Views of a Rollout (RL training–inference mismatch): text, HTML, and the two plots RL users read —
the importance-ratio histogram with the truncation bands, and |log-ratio| by position."""

from __future__ import annotations

from html import escape

from hfvllm_lab.render.format import fmt_sci, quoted, text_table
from hfvllm_lab.rules import RATIO_BANDS

METRIC_HEADERS = ["", "path", "against", "mean |lr|", "p99 |lr|", "max |lr|", "kl (k1)", "k3 kl",
                  *[f"out [{lo:g},{hi:g}]" for lo, hi in RATIO_BANDS], "log-ppl diff", "chi2 tok", "seq ESS"]
METRIC_ALIGN = "lll" + "r" * (len(METRIC_HEADERS) - 3)
TOKEN_HEADERS = ["sample", "pos", "token", "after ...", "rollout lp", "trainer lp", "log-ratio"]


def metric_rows(rollout) -> list[list[str]]:
    rows = []
    for role, m in [("judged", rollout.judged)] + [("floor", f) for f in rollout.floors]:
        if m is None:
            continue
        bands = [f"{m.outside_bands.get(f'outside_{lo:g}_{hi:g}', 0.0):.2%}" for lo, hi in RATIO_BANDS]
        rows.append([role, m.path, m.against, fmt_sci(m.mean_abs_log_ratio, 2), fmt_sci(m.p99_abs_log_ratio, 2),
                     fmt_sci(m.max_abs_log_ratio, 2), fmt_sci(m.kl, 2), fmt_sci(m.k3_kl, 2), *bands,
                     fmt_sci(m.log_ppl_diff, 2), fmt_sci(m.chi2_token, 2), f"{m.seq_ess:.3f}"])
    return rows


def token_rows(rollout) -> list[list[str]]:
    return [[str(t.sample), str(t.position), quoted(t.text, 16), quoted(t.context, 28), f"{t.rollout_logprob:.3f}",
             f"{t.trainer_logprob:.3f}", f"{t.log_ratio:+.3f}"] for t in rollout.top_tokens]


def heading(rollout) -> str:
    v = rollout.verdict
    verdict = f"{v.label}" + (f" ({v.ratio:.2f}x)" if v and v.ratio is not None else "") if v else "no verdict"
    return (f"Rollout: {rollout.model}, engine {rollout.dtype}, trainer {rollout.trainer_dtype}: {verdict}")


def settings_line(rollout) -> str:
    s = rollout.settings
    tokens = rollout.judged.tokens if rollout.judged else 0
    return (f"{len(rollout.samples)} samples, {tokens} tokens; n={s.get('n')}, temperature {s.get('temperature')}, "
            f"top_p {s.get('top_p')}, top_k {s.get('top_k')}, {s.get('logprobs_mode')}; seeding: {s.get('seeding')}")


def rollout_text(rollout) -> str:
    from hfvllm_lab.render.text import RULE, THIN

    lines = [RULE, heading(rollout), RULE, settings_line(rollout),
             text_table(METRIC_HEADERS, metric_rows(rollout), align=METRIC_ALIGN)]
    if rollout.verdict is not None:
        lines += [f"verdict: {rollout.verdict.reason}", f"rule: {rollout.verdict.rule}"]
    if rollout.top_tokens:
        lines += [THIN, "Most divergent tokens (log-ratio = log p_trainer - log p_rollout):",
                  text_table(TOKEN_HEADERS, token_rows(rollout), align="rrllrrr")]
    lines += [f"note: {n}" for n in rollout.notes]
    lines.append(RULE)
    return "\n".join(lines)


def rollout_html(rollout) -> str:
    from hfvllm_lab.render.html import FAIL_BADGE, OK_BADGE, _badge, _p, _wrap, table

    body = [_p(settings_line(rollout))]
    v = rollout.verdict
    if v is not None:
        badge = _badge(v.label, "hvl-ok" if v.ok else "hvl-fail", OK_BADGE if v.ok else FAIL_BADGE)
        body.append(f'<div class="hvl-verdict">{badge} {escape(v.reason)}</div>')
    body.append(table(METRIC_HEADERS, metric_rows(rollout), align=METRIC_ALIGN, css_class="hvl-rollout-metrics"))
    if rollout.top_tokens:
        body.append(_p("Most divergent tokens (log-ratio = log p_trainer - log p_rollout):"))
        body.append(table(TOKEN_HEADERS, token_rows(rollout), align="rrllrrr", css_class="hvl-rollout-tokens"))
    body.extend(_p(f"note: {n}") for n in rollout.notes)
    return _wrap("rollout", heading(rollout), body)


def plot_rollout(rollout, kind: str = "ratio", ax=None):
    """kind="ratio": histogram of the importance ratio p_trainer/p_rollout on a log axis, judged engine
    against the first floor, with RL's truncation bands; "position": mean |log-ratio| by position."""
    import math

    from hfvllm_lab.render.plots import _figure

    if kind not in ("ratio", "position"):
        raise ValueError(f"kind must be 'ratio' or 'position', got {kind!r}")
    fig, ax = _figure(ax, (7, 3.2))
    paths = [("judged", rollout.judged, "#1e88e5")] + [("floor", f, c) for f, c in
                                                       zip(rollout.floors, ("#9e9e9e", "#ff9800", "#8e24aa"))]
    if kind == "ratio":
        values = [x for _, m, _ in paths if m for row in m.log_ratios for x in row]
        span = max([abs(x) for x in values] + [math.log(6)])
        edges = [math.exp(-span + 2 * span * i / 60) for i in range(61)]
        for role, m, color in paths[:2]:
            if m is None:
                continue
            ratios = [math.exp(x) for row in m.log_ratios for x in row]
            ax.hist(ratios, bins=edges, histtype="step" if role == "floor" else "stepfilled", alpha=0.6,
                    color=color, label=f"{role}: {m.path}")
        for (lo, hi), style in zip(RATIO_BANDS, ("--", ":")):
            for x in (lo, hi):
                ax.axvline(x, color="#b71c1c", linestyle=style, linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("importance ratio p_trainer / p_rollout (bands " +
                      ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in RATIO_BANDS) + ")")
        ax.set_ylabel("tokens")
    else:
        for role, m, color in paths:
            if m is None:
                continue
            means = m.position_means
            ax.plot(range(len(means)), means, color=color, label=f"{role}: {m.path}",
                    linestyle="-" if role == "judged" else "--")
        ax.set_xlabel("position in the continuation")
        ax.set_ylabel("mean |log-ratio|")
    ax.set_title(heading(rollout), fontsize=9)
    ax.legend(fontsize=7)
    return fig


__all__ = ["plot_rollout", "rollout_html", "rollout_text"]
