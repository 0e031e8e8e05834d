"""Views of a Diagnosis: one row per lens (the worst flip against the Session's own setting), then each
lens' arms; HTML with a badge per lens; a plot of every arm's KL relative to its noise floor."""

from __future__ import annotations

from html import escape

from hfvllm_lab.render.format import fmt_opt, fmt_sci, text_table
from hfvllm_lab.rules import (
    LENS_CAUSE,
    LENS_EVERY_ARM,
    LENS_FAILED,
    LENS_REMEDY,
    LENS_UNAVAILABLE,
    NOISE_FACTOR,
    RATIO_BANDS,
)

LENS_HEADERS = ["lens", "status", "base arm", "flip arm", "base x floor", "flip x floor", "flip KL mean",
                f"flip out [{RATIO_BANDS[0][0]:g},{RATIO_BANDS[0][1]:g}]", "base tok/s", "flip tok/s", "seconds"]
LENS_ALIGN = "llllrrrrrrr"
ARM_HEADERS = ["arm", "verdict", "x floor", "KL mean", "KL p99", "floor KL mean", "top-1", "KL vs arm 0",
               *[f"out [{lo:g},{hi:g}]" for lo, hi in RATIO_BANDS], "tok/s", "setting"]
ARM_ALIGN = "llrrrrrr" + "r" * len(RATIO_BANDS) + "rl"


def _ratio(value) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else "-"


def _tok(value) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else "-"


def lens_rows(diagnosis) -> list[list[str]]:
    rows = []
    band = f"outside_{RATIO_BANDS[0][0]:g}_{RATIO_BANDS[0][1]:g}"
    for lens in diagnosis.lenses:
        r = lens.row()
        flip_band = r.get(f"flip_{band}")
        rows.append([lens.name, lens.status, fmt_opt(r["base_arm"]), fmt_opt(r["flip_arm"]), _ratio(r["base_ratio"]),
                     _ratio(r["flip_ratio"]), fmt_sci(r["flip_kl_mean"], 2),
                     f"{flip_band:.2%}" if flip_band is not None else "-", _tok(r["base_tok_s"]),
                     _tok(r["flip_tok_s"]), f"{lens.seconds:.1f}"])
    return rows


def arm_rows(lens) -> list[list[str]]:
    rows = []
    between = list(lens.kl_between) + [None] * (len(lens.arms) - len(lens.kl_between))
    for arm, kl in zip(lens.arms, between):
        v, d = arm.verdict, arm.diff
        bands = [f"{arm.outside_bands[k]:.2%}" if k in arm.outside_bands else "-"
                 for k in (f"outside_{lo:g}_{hi:g}" for lo, hi in RATIO_BANDS)]
        rows.append([arm.name, v.label if v else "did not run", _ratio(arm.floor_ratio),
                     fmt_sci(d.kl_mean if d else None, 2), fmt_sci(d.kl_p99 if d else None, 2),
                     fmt_sci(arm.floor.kl_mean if arm.floor else None, 2),
                     f"{d.top1_agreement:.1%}" if d else "-", fmt_sci(kl, 2), *bands, _tok(arm.tokens_per_second),
                     arm.setting])
    return rows


def heading(diagnosis) -> str:
    beyond = ", ".join(diagnosis.beyond) or "none"
    line = f"Diagnosis: {diagnosis.model} ({diagnosis.dtype}, {diagnosis.backend} backend): beyond noise: {beyond}"
    every = [name for name in diagnosis.mismatched if name not in diagnosis.beyond + diagnosis.remedies]
    if every:
        line += f"; beyond noise in every arm: {', '.join(every)}"
    line += f"; remedies: {', '.join(diagnosis.remedies) or 'none'}"
    if diagnosis.failed:
        line += f"; FAILED: {', '.join(diagnosis.failed)}"
    return line


def summary_line(diagnosis) -> str:
    return (f"{diagnosis.sequences} sampled sequences, {diagnosis.positions} decode positions per arm, every arm "
            f"against transformers float32; x floor: KL against the floor on the same positions (beyond "
            f"{NOISE_FACTOR:g}x is beyond noise); {diagnosis.seconds:.0f} s")


def diagnosis_text(diagnosis) -> str:
    from hfvllm_lab.render.text import RULE, THIN

    lines = [RULE, heading(diagnosis), RULE, summary_line(diagnosis),
             text_table(LENS_HEADERS, lens_rows(diagnosis), align=LENS_ALIGN)]
    for lens in diagnosis.lenses:
        lines += [THIN, f"{lens.name}: {lens.status} - {lens.reason}", f"  flips: {lens.factor}" if lens.factor else ""]
        if lens.arms:
            lines.append(text_table(ARM_HEADERS, arm_rows(lens), align=ARM_ALIGN))
        for arm in lens.arms:
            lines += [f"  {arm.name}: {n}" for n in arm.notes]
        lines += [f"  note: {n}" for n in lens.notes]
    lines += [f"note: {n}" for n in diagnosis.notes]
    lines.append(RULE)
    return "\n".join(line for line in lines if line != "")


def _lens_badge(status: str):
    from hfvllm_lab.render.html import FAIL_BADGE, OK_BADGE, _badge

    if status in (LENS_CAUSE, LENS_EVERY_ARM, LENS_FAILED):
        return _badge(status, "hvl-fail", FAIL_BADGE)
    if status == LENS_UNAVAILABLE:
        return _badge(status, "hvl-unavailable", "background:#eeeeee;color:#555")
    if status == LENS_REMEDY:
        return _badge(status, "hvl-remedy", "background:#fff3e0;color:#e65100")
    return _badge(status, "hvl-ok", OK_BADGE)


def diagnosis_html(diagnosis) -> str:
    from hfvllm_lab.render.html import Raw, _p, _wrap, table

    rows = lens_rows(diagnosis)
    for row, lens in zip(rows, diagnosis.lenses):
        row[1] = _lens_badge(lens.status)
    body = [_p(summary_line(diagnosis)), table(LENS_HEADERS, rows, align=LENS_ALIGN, css_class="hvl-lenses")]
    for lens in diagnosis.lenses:
        parts = [f"<summary>{_lens_badge(lens.status)} <b>{escape(lens.name)}</b>: {escape(lens.reason)}</summary>",
                 _p(f"flips: {lens.factor}")]
        if lens.arms:
            parts.append(table(ARM_HEADERS, arm_rows(lens), align=ARM_ALIGN, css_class="hvl-arms"))
        parts += [_p(f"{arm.name}: {n}") for arm in lens.arms for n in arm.notes]
        parts += [_p(f"note: {n}") for n in lens.notes]
        body.append(Raw(f'<details class="hvl-lens" {"open" if lens.status == LENS_CAUSE else ""}>'
                        f'{"".join(parts)}</details>'))
    body.extend(_p(f"note: {n}") for n in diagnosis.notes)
    return _wrap("diagnosis", heading(diagnosis), body)


def plot_diagnosis(diagnosis, ax=None):
    """Every arm's distance to its verdict's limit (log axis; above 1 is beyond noise, or FAIL in
    float32), lens by lens; arms that did not run are left out."""
    from hfvllm_lab.render.plots import _figure

    fig, ax = _figure(ax, (8, 0.35 * sum(len(lens.arms) for lens in diagnosis.lenses) + 1.2))
    labels, values, colors = [], [], []
    for lens in diagnosis.lenses:
        for arm in lens.arms:
            if arm.limit_ratio is None:
                continue
            labels.append(f"{lens.name}: {arm.name}")
            values.append(max(arm.limit_ratio, 1e-3))
            colors.append("#1e88e5" if arm.ok else "#e53935")
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="#b71c1c", linestyle="--", linewidth=1)
    ax.set_xlabel(f"distance to the verdict's limit: KL x floor / {NOISE_FACTOR:g} (float32: max |dlogp| / 1e-3)")
    ax.set_title(heading(diagnosis), fontsize=8)
    return fig


__all__ = ["diagnosis_html", "diagnosis_text", "plot_diagnosis"]
