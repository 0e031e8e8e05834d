"""Formatting helpers shared by the text, HTML and plot renderers: units, tables, status styles."""

from __future__ import annotations

from collections.abc import Sequence

from hfvllm_lab.vocab import ACTIONS, NESTED_KINDS, NOT_FUSED, STATUSES, STEP_PHASES

# Replacement-tree statuses and record actions (records have no "skipped"), in display order.
STATUS_ORDER = STATUSES
ACTION_ORDER = ACTIONS
STATUS_MARKERS = {"replaced": "[R]", "fused": "[F]", "tied": "[T]", "routed": "[A]", "kept": "[K]", "elsewhere": "[P]",
                  "skipped": "[ ]"}
# (foreground, background) per status; also used for bar colours in plots.
STATUS_COLORS = {
    "replaced": ("#1b5e20", "#c8e6c9"),
    "fused": ("#004d40", "#b2dfdb"),
    "tied": ("#0d47a1", "#bbdefb"),
    "routed": ("#4a148c", "#e1bee7"),
    "kept": ("#bf360c", "#ffe0b2"),
    "elsewhere": ("#37474f", "#cfd8dc"),
    "skipped": ("#616161", "#eeeeee"),
}
UNKNOWN_COLOR = ("#000000", "#fff59d")

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB")


def _on_rank(result) -> str:
    """", rank 1 (tp 1/2, pp 0/2)" in a title when the result describes one rank of several."""
    rank = getattr(result, "rank", "")
    return f", {rank}" if rank else ""


SHARD_ROWS = 12  # split weights listed in a log before "... N more"


def shard_rows(log) -> tuple[str, list[list[str]]]:
    """(heading, rows) of the records whose weight this tensor-parallel rank holds part of: module, HF shape,
    this rank's part; ("", []) where nothing is split."""
    split = [r for r in log.records if getattr(r, "shard_shape", ())]
    if not split:
        return "", []
    rows = [[r.name, "x".join(map(str, r.shape)), "x".join(map(str, r.shard_shape))] for r in split[:SHARD_ROWS]]
    if len(split) > SHARD_ROWS:
        rows.append([f"... {len(split) - SHARD_ROWS} more", "", ""])
    return f"Split by tensor parallel ({len(split)}): this rank's part of each weight", rows


def status_marker(status: str) -> str:
    return STATUS_MARKERS.get(status, "[?]")


def status_legend() -> str:
    return "  ".join(f"{STATUS_MARKERS[s]} {s}" for s in STATUS_ORDER)


def ordered_keys(present: Sequence[str] | set[str], order: Sequence[str]) -> list[str]:
    """Keys of `order` that are present, then any others (sorted), so unknown values still show."""
    present = set(present)
    return [k for k in order if k in present] + sorted(present - set(order))


def fmt_bytes(n: int | float | None) -> str:
    """Binary units: `512 B`, `1.50 KiB`, `256.59 MiB`; `-` for None."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{int(value)} B"
    for unit in _BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{sign}{value:.2f} {unit}"
    raise AssertionError("unreachable")


def bytes_scale(largest: float) -> tuple[float, str]:
    """(divisor, unit) to show values up to `largest` bytes on an axis."""
    divisor, unit = 1.0, "B"
    for next_unit in _BYTE_UNITS:
        if largest < divisor * 1024:
            break
        divisor, unit = divisor * 1024, next_unit
    return divisor, unit


def fmt_seconds(s: float | None) -> str:
    """`1.234 s`, `12.34 ms`, `56.7 us`, `80 ns`; `-` for None."""
    if s is None:
        return "-"
    a = abs(s)
    if a == 0:
        return "0 s"
    if a >= 1:
        return f"{s:.3f} s"
    if a >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    if a >= 1e-6:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e9:.0f} ns"


def seconds_scale(largest: float) -> tuple[float, str]:
    """(multiplier, unit) to show durations up to `largest` seconds on an axis."""
    if largest >= 1:
        return 1.0, "s"
    if largest >= 1e-3:
        return 1e3, "ms"
    return 1e6, "us"


def fmt_count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def fmt_sci(x: float | None, digits: int = 1) -> str:
    """Scientific notation for small diffs: `3.2e-04`; `-` for None."""
    return "-" if x is None else f"{x:.{digits}e}"


def fmt_pct(part: float | None, whole: float | None) -> str:
    if part is None or not whole:
        return "-"
    return f"{100.0 * part / whole:.1f}%"


def quoted(text: str, limit: int = 120) -> str:
    """`repr(text)`, cut to `limit` characters with `...` when longer."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def fmt_opt(x: object) -> str:
    return "-" if x is None or x == "" else str(x)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None,
               indent: str = "  ") -> str:
    """Aligned plain-text table; `align` holds one `l`/`r` per column (default: all left)."""
    cells = [[str(c) for c in row] for row in rows]
    ncols = len(headers)
    align = (align or "l" * ncols).ljust(ncols, "l")
    widths = [max([len(h)] + [len(r[i]) for r in cells if i < len(r)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)]
        return (indent + "  ".join(parts)).rstrip()

    out = [line(list(headers)), indent + "  ".join("-" * w for w in widths)]
    out += [line(r + [""] * (ncols - len(r))) for r in cells]
    return "\n".join(out)


def wrapped_columns(rows: Sequence[tuple[str, Sequence[str]]], width: int = 100, indent: str = "  ") -> str:
    """A horizontal table (one labelled row per series, one column per step), wrapped into blocks
    no wider than `width`; cells right-aligned, columns aligned across all rows of a block."""
    ncols = max((len(cells) for _, cells in rows), default=0)
    label_w = max((len(label) for label, _ in rows), default=0)
    col_w = [max(len(cells[i]) if i < len(cells) else 0 for _, cells in rows) for i in range(ncols)]
    blocks: list[list[int]] = [[]]
    used = len(indent) + label_w
    for i, w in enumerate(col_w):
        if blocks[-1] and used + 2 + w > width:
            blocks.append([])
            used = len(indent) + label_w
        blocks[-1].append(i)
        used += 2 + w
    out: list[str] = []
    for b, cols in enumerate(blocks):
        if b:
            out.append("")
        for label, cells in rows:
            parts = [(cells[i] if i < len(cells) else "").rjust(col_w[i]) for i in cols]
            out.append((indent + label.ljust(label_w) + "  " + "  ".join(parts)).rstrip())
    return "\n".join(out)


# -- views shared by text and HTML: pick and order what the result objects hold ------------------
PHASE_ORDER = STEP_PHASES  # NESTED_KINDS (timed inside a "layer" row) comes from hfvllm_lab.vocab


def class_label(original: str, current: str | None, arrow: str = "->") -> str:
    """`Linear -> ReplicatedLinear` when the class changed, else the class."""
    if current and current != original:
        return f"{original} {arrow} {current}"
    return original


def count_rows(log) -> tuple[list[str], list[tuple[str, dict[str, int], int, str]]]:
    """Actions shown and, per original class: (class, action -> n, total, new classes)."""
    counts = log.counts()
    actions = ordered_keys({a for per in counts.values() for a in per} | set(ACTION_ORDER), ACTION_ORDER)
    new: dict[str, set[str]] = {}
    for r in log.records:
        if r.new_class:  # same-named classes (HF and vLLM GemmaRMSNorm) are still replacements
            new.setdefault(r.original_class, set()).add(r.new_class)
    rows = [(cls, per, sum(per.values()), ", ".join(sorted(new.get(cls, ()))))
            for cls, per in sorted(counts.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))]
    return actions, rows


def not_fused_rows(log) -> list[list[str]]:
    """Why projections were left unfused: [reason, how many modules, the first one], most first."""
    groups: dict[str, list[str]] = {}
    for r in log.records:
        if r.reason.startswith(NOT_FUSED):
            groups.setdefault(r.reason.removeprefix(NOT_FUSED), []).append(r.name)
    return [[reason, str(len(names)), names[0]] for reason, names in sorted(groups.items(), key=lambda kv: -len(kv[1]))]


def not_fused_heading(rows: list[list[str]]) -> str:
    n = sum(int(r[1]) for r in rows)
    return f"Not fused ({n} projection{'' if n == 1 else 's'}):"


def timing_phases(timing) -> list[str]:
    """Phases present in `timing.steps`, prefill then decode then any other."""
    return ordered_keys([p for p in timing.steps], PHASE_ORDER)


def timing_module_label(row, indent: str = "  ") -> str:
    return indent + row.module if row.kind in NESTED_KINDS else row.module


def step_cells(pc) -> dict[str, list[str]]:
    """Per-step strings of one prompt comparison: step, hf, vllm, lp diff (no divergence marks)."""
    n = max(len(pc.hf.token_ids), len(pc.vllm.token_ids), len(pc.logprob_diffs))

    def at(seq, i, fmt=str):
        return fmt(seq[i]) if i < len(seq) else ""

    return {
        "step": [str(i) for i in range(n)],
        "hf": [at(pc.hf.token_ids, i) for i in range(n)],
        "vllm": [at(pc.vllm.token_ids, i) for i in range(n)],
        "diff": [at(pc.logprob_diffs, i, fmt_sci) for i in range(n)],
    }


def prompt_max_diff(pc) -> float | None:
    return max((d for d in pc.logprob_diffs if d is not None), default=None)


def figure_rows(cmp) -> list[list[str]]:
    """Figures table rows in hf, vllm, other order."""
    rows = []
    for key in ordered_keys(list(cmp.figures), ("hf", "vllm")):
        f = cmp.figures[key]
        rows.append([f.path, f.label, f"{f.tokens_per_second:.2f}", fmt_count(f.generated_tokens),
                     fmt_seconds(f.seconds), fmt_bytes(f.param_bytes), fmt_bytes(f.memory_bytes),
                     fmt_opt(f.memory_source)])
    return rows


FIGURE_HEADERS = ("path", "label", "tokens/s", "tokens", "time", "params", "memory", "memory source")
FIGURE_ALIGN = "llrrrrrl"


TEACHER_HEADERS = ["", "steps", "path", "KL mean", "KL p99", "KL max", "top-1", "max |dlogp| target"]
TEACHER_ALIGN = "lllrrrrr"


def teacher_rows(teacher) -> list[list[str]]:
    """The judged path and each noise floor, against the truth, one row each: prefill, then decode."""
    parts = [("prefill", teacher.judged, teacher.floors), ("decode", teacher.decode_judged, teacher.decode_floors)]
    rows = []
    for steps, judged, floors in parts:
        for role, d in [("judged", judged)] + [("floor", f) for f in floors]:
            if d is not None and judged is not None:
                rows.append([role, steps, d.path, fmt_sci(d.kl_mean, 2), fmt_sci(d.kl_p99, 2), fmt_sci(d.kl_max, 2),
                             f"{d.top1_agreement:.1%}", fmt_sci(d.max_target_logprob_diff, 2)])
    return rows


def teacher_heading(teacher) -> str:
    d = teacher.judged
    against = d.against if d is not None else "?"
    line = (f"teacher-forced: {len(teacher.sequences)} sequences (prompt + reference greedy continuation), "
            f"{d.positions if d is not None else 0} positions, full distributions against {against}")
    decode = teacher.decode_judged
    if decode is not None:
        line += (f"; decode: the engine's {len(teacher.decode_sequences)} greedy sequences, {decode.positions} "
                 "decode steps, against the truth teacher-forced on the same tokens")
    return line


def part_verdicts(teacher) -> str:
    """"prefill: within noise (0.96x); decode: beyond noise (5.2x)" where both were judged."""
    parts = [("prefill", teacher.prefill_verdict), ("decode", teacher.decode_verdict)]
    shown = [f"{name}: {v.status}" + (f" ({v.ratio:.2g}x)" if v.ratio is not None else "") for name, v in parts if v]
    return "; ".join(shown) if len(shown) > 1 else ""


def verdict_line(cmp) -> str:
    v = cmp.verdict
    ratio = f" ({v.ratio:.2f}x the noise floor)" if v.ratio is not None else ""
    return f"verdict: {v.label}{ratio} - {v.reason}"


def bisect_summary(b) -> str:
    """One line: where the first module past tolerance is, or that none is."""
    if b.mode == "tokenization differs":
        return "tokenization differs: nothing compared"
    if b.mode == "noise":
        over = sum(1 for r in b.rows if not r.ok)
        head = f"{len(b.rows)} modules, judged against transformers' own rounding at each module: "
        if b.first_divergent is None:
            return head + "no module beyond noise"
        first = next(r for r in b.rows if r.module == b.first_divergent)
        return (head + f"first beyond noise {b.first_divergent} (relative error {fmt_sci(first.relative_error)} vs "
                f"noise {fmt_sci(first.noise)}), {over} beyond noise")
    worst = max(b.rows, key=lambda r: r.max_abs_diff, default=None)
    over = sum(1 for r in b.rows if not r.ok)
    head = f"{len(b.rows)} modules, tolerance {b.tolerance:g}: "
    if b.first_divergent is None:
        head += "no module past tolerance"
    else:
        first = next((r for r in b.rows if r.module == b.first_divergent), None)
        diff = f" (max |diff| {fmt_sci(first.max_abs_diff)})" if first else ""
        head += f"first divergent {b.first_divergent}{diff}, {over} past tolerance"
    if worst is not None:
        head += f"; largest {fmt_sci(worst.max_abs_diff)} at {worst.module}"
    return head
