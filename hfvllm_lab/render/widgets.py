"""The dashboard's view (ipywidgets 8): controls, a Run button, a progress bar, an error area and one
tab per result. It only draws: `show_session()` and `show_run()` receive result objects and fill the
tabs. Building Sessions, running compare/score, catching a run's errors and wiring the Run button
belong to the controller beside the Session, `hfvllm_lab.dashboard.Dashboard`.

Figures go into `HTML` widgets as base64 `<img>` tags (they survive nbconvert and show as
`data:image/png` in the browser) and are cleared after use.

    from hfvllm_lab import Session
    Session("gemma").dashboard()          # or: hfvllm_lab.dashboard.Dashboard().widget
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

import ipywidgets as w

from hfvllm_lab.render.format import count_rows, fmt_count, fmt_opt
from hfvllm_lab.render.html import figure_to_img_tag, status_badge, table
from hfvllm_lab.vocab import STEP_PHASES

if TYPE_CHECKING:
    from hfvllm_lab.results.attention import AttentionReport
    from hfvllm_lab.results.comparison import Comparison
    from hfvllm_lab.results.diagnosis import Diagnosis
    from hfvllm_lab.results.generation import Generation
    from hfvllm_lab.results.memory import MemoryReport
    from hfvllm_lab.results.replacements import ReplacementLog
    from hfvllm_lab.results.timing import LayerTiming

TAB_TITLES = ("Replacements", "Memory", "Attention", "Timing", "Parity", "Diagnose")
PHASES = STEP_PHASES
ALL_CLASSES = "(all classes)"
ALL_RANKS = "(the session's views: rank 0, stages merged where they can be)"
FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px"


def _note(text: str, color: str = "#555") -> str:
    return f'<div class="hvl-dashboard-note" style="{FONT};color:{color};margin:4px 0">{escape(text)}</div>'


def _img(fig, alt: str) -> str:
    """The figure as an `<img>` tag; the figure is cleared afterwards (it is not pyplot-managed)."""
    try:
        return figure_to_img_tag(fig, alt=alt)
    finally:
        fig.clear()


def _shape(record) -> str:
    """"64x64", or under tensor parallel "64x64 (this rank 32x64)"."""
    shape = "x".join(map(str, record.shape)) or "-"
    shard = getattr(record, "shard_shape", ())
    return f"{shape} (this rank {'x'.join(map(str, shard))})" if shard else shape


def _options(values, current) -> list[str]:
    values = list(values)
    if current is not None and current not in values:
        values.append(current)
    return values


@dataclass
class ControlChoices:
    """Initial values and options of the controls. The controller fills it from the Session's
    vocabulary (zoo names, backends, attention paths), which this module does not import."""

    model: str
    models: Sequence[str]
    device: str
    devices: Sequence[str]
    dtype: str
    dtypes: Sequence[str]
    backend: str
    backends: Sequence[str]
    attention: str
    attentions: Sequence[str]
    prompts: Sequence[str]
    max_tokens: int = 8
    steps: int = 4  # length of the progress bar
    lenses: Sequence[str] = ()  # the lenses Diagnose can run


@dataclass
class RunResults:
    """What one run produced, for the Timing and Parity tabs (plain results, nothing to run)."""

    comparison: Comparison | None = None  # compare(..., bisect=True)
    timing: LayerTiming | None = None  # the vLLM per-module profile of that compare
    scores: list[Generation] | None = None  # when the run could only score (HF attention)
    attention_path: str = "vllm"  # the session's attention: "vllm", or HF "sdpa"/"eager"
    refusal: str = ""  # why compare() was refused
    bisect_note: str = ""  # why compare ran without bisect


class _DashboardBox(w.VBox):
    """The top-level container; it also carries a static `text/html` rendering of the results, so a
    notebook saved without widget state (nbconvert, GitHub) still shows them."""

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs) or {}
        view = getattr(self, "_view", None)
        if view is not None:
            data["text/html"] = view.static_html()
        return data


class DashboardView:
    """Controls (model, device, dtype, backend, attention, prompts, max tokens), a Run button with a
    progress bar and an error area, and tabs: Replacements, Memory, Attention, Timing, Parity, Diagnose
    (lens choice, its own button and progress bar).

    Drawing only. The owner wires `run_button`, reads `values()`, steps `set_progress()`, and hands
    results to `show_session()` / `show_run()`; the class filter and the phase toggle redraw from
    what was last shown. Errors while redrawing go to `report_error` (the owner may replace it), and
    `static_header` (a callable returning HTML) heads the static rendering.
    """

    def __init__(self, choices: ControlChoices) -> None:
        self.log: ReplacementLog | None = None  # the log shown
        self.session_views = None  # (log, memory, attention) last handed to show_session
        self.shown_counts: dict[str, dict[str, int]] = {}
        self.run_results = RunResults()  # what the Timing and Parity tabs show
        self.report_error: Callable[[BaseException], None] = self.show_error
        self.static_header: Callable[[], str] = lambda: ""
        self._lenses = tuple(choices.lenses)
        self._build_controls(choices)
        self._build_tabs()
        self.rank_report = None  # a RankReport under tensor / pipeline parallel, else None
        self.rank_choice = w.Dropdown(options=[(ALL_RANKS, -1)], value=-1, description="rank",
                                      style={"description_width": "50px"},
                                      layout=w.Layout(width="360px", display="none"))
        self.widget = _DashboardBox(children=[
            w.HTML('<div style="font-weight:700;font-size:14px">hfvllm_lab dashboard</div>'),
            self.controls, w.HBox([self.run_button, self.progress, self.status]), self.error, self.rank_choice,
            self.tabs,
        ])
        self.widget._view = self
        self.class_filter.observe(self._on_filter, names="value")
        self.phase.observe(self._on_phase, names="value")
        self.rank_choice.observe(self._on_rank, names="value")
        self.show_placeholders()

    # -- construction -------------------------------------------------------------------
    def _build_controls(self, c: ControlChoices) -> None:
        style = {"description_width": "80px"}
        self.model = w.Combobox(value=c.model, options=list(c.models), description="model", ensure_option=False,
                                placeholder="zoo name or checkpoint path", style=style)
        self.device = w.Dropdown(options=_options(c.devices, c.device), value=c.device, description="device",
                                 style=style)
        self.dtype = w.Dropdown(options=_options(c.dtypes, c.dtype), value=c.dtype, description="dtype", style=style)
        self.backend = w.Dropdown(options=list(c.backends), value=c.backend, description="backend", style=style)
        self.attention = w.Dropdown(options=list(c.attentions), value=c.attention, description="attention",
                                    style=style)
        self.prompts = w.Textarea(value="\n".join(c.prompts), description="prompts", style=style,
                                  placeholder="one prompt per line", layout=w.Layout(width="520px", height="72px"))
        self.max_tokens = w.IntSlider(value=c.max_tokens, min=1, max=64, description="max tokens", style=style)
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="build the session if the settings changed, then compare and profile")
        self.progress = w.IntProgress(value=0, min=0, max=c.steps, description="idle",
                                      style={"description_width": "110px"})
        self.status = w.HTML("")
        self.error = w.HTML("")
        self.controls = w.VBox([
            w.HBox([self.model, self.device, self.dtype]),
            w.HBox([self.backend, self.attention, self.max_tokens]),
            self.prompts,
        ])

    def _build_tabs(self) -> None:
        # Replacements
        self.replacements_plot = w.HTML()
        self.counts_html = w.HTML()
        self.class_filter = w.Dropdown(options=[ALL_CLASSES], value=ALL_CLASSES, description="class",
                                       style={"description_width": "50px"}, layout=w.Layout(width="420px"))
        self.records_html = w.HTML()
        self.replacements_html = w.HTML()
        # Memory, Attention
        self.memory_plot = w.HTML()
        self.memory_html = w.HTML()
        self.ranks_html = w.HTML()  # every rank side by side (tensor / pipeline parallel)
        self.attention_message = w.HTML()
        self.attention_html = w.HTML()
        # Timing
        self.phase = w.ToggleButtons(options=list(PHASES), value="decode", description="phase",
                                     style={"description_width": "50px", "button_width": "80px"})
        self.timing_plot = w.HTML()
        self.timing_html = w.HTML()
        # Parity
        self.parity_html = w.HTML()
        # Diagnose
        lenses = list(self._lenses)
        self.lens_choice = w.SelectMultiple(options=lenses, value=tuple(lenses), description="lenses", rows=6,
                                            style={"description_width": "50px"}, layout=w.Layout(width="300px"))
        self.diagnose_button = w.Button(description="Diagnose", icon="stethoscope",
                                        tooltip="sample once, then flip one engine factor per lens (minutes)")
        self.diagnose_progress = w.IntProgress(value=0, min=0, max=1, description="idle",
                                               style={"description_width": "160px"})
        self.diagnose_plot = w.HTML()
        self.diagnose_html = w.HTML()
        self.tab_children = {
            "Replacements": w.VBox([self.replacements_plot, self.counts_html, self.class_filter, self.records_html,
                                    self.replacements_html]),
            "Memory": w.VBox([self.memory_plot, self.memory_html, self.ranks_html]),
            "Attention": w.VBox([self.attention_message, self.attention_html]),
            "Timing": w.VBox([self.phase, self.timing_plot, self.timing_html]),
            "Parity": w.VBox([self.parity_html]),
            "Diagnose": w.VBox([w.HBox([self.lens_choice, w.VBox([self.diagnose_button, self.diagnose_progress])]),
                                self.diagnose_plot, self.diagnose_html]),
        }
        self.tabs = w.Tab(children=[self.tab_children[t] for t in TAB_TITLES], titles=TAB_TITLES)

    def show_placeholders(self) -> None:
        empty = _note("no session yet: choose a model and press Run")
        for html in (self.replacements_html, self.memory_html, self.attention_html):
            html.value = empty
        self.timing_html.value = self.parity_html.value = _note("press Run to compare HF and vLLM")
        self.diagnose_html.value = _note("choose lenses and press Diagnose: each flips one engine factor on the same "
                                         "sampled sequences (the whole set takes minutes)")

    # -- what the owner drives ----------------------------------------------------------
    def values(self) -> dict:
        """The controls' values: model (stripped), device, dtype, backend, attention, prompts (one per
        non-empty line), max_tokens."""
        return dict(model=self.model.value.strip(), device=self.device.value, dtype=self.dtype.value,
                    backend=self.backend.value, attention=self.attention.value,
                    prompts=[line.strip() for line in self.prompts.value.splitlines() if line.strip()],
                    max_tokens=int(self.max_tokens.value))

    def set_busy(self, busy: bool) -> None:
        self.run_button.disabled = busy

    def set_progress(self, i: int, label: str) -> None:
        self.progress.value = i
        self.progress.description = label
        self.status.value = _note(f"{i}/{self.progress.max}: {label}")

    def show_error(self, exc: BaseException) -> None:
        """Type, message and a collapsible traceback in the error area."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.error.value = (
            f'<div class="hvl-dashboard-error" style="{FONT};color:#b71c1c;background:#ffebee;padding:4px 8px;'
            f'border-left:3px solid #b71c1c"><b>{escape(type(exc).__name__)}</b>: {escape(str(exc))}'
            f'<details><summary>traceback</summary><pre style="white-space:pre-wrap">{escape(tb)}</pre>'
            f"</details></div>")

    def clear_error(self) -> None:
        self.error.value = ""

    def _redraw(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # a redraw from a control's callback: nobody else would see it
            self.report_error(exc)

    # -- drawing ------------------------------------------------------------------------
    def show_session(self, log: ReplacementLog, memory: MemoryReport, attention: AttentionReport) -> None:
        """The Replacements, Memory and Attention tabs."""
        self.session_views = (log, memory, attention)
        self.draw_replacements(log)
        self.memory_plot.value = _img(memory.plot(), "memory by phase")
        self.memory_html.value = memory._repr_html_()
        self.attention_html.value = attention._repr_html_()
        self.attention_message.value = ""

    def show_ranks(self, report) -> None:
        """The rank selector (shown under tensor / pipeline parallel) and every rank side by side; choosing a
        rank redraws the Replacements, Memory and Timing tabs with that rank's own views."""
        self.rank_report = report
        ranks = report.rows if report is not None else []
        with self.rank_choice.hold_trait_notifications():
            self.rank_choice.options = [(ALL_RANKS, -1)] + [(r.label, i) for i, r in enumerate(ranks)]
            self.rank_choice.value = -1
        self.rank_choice.layout.display = "" if len(ranks) > 1 else "none"
        self.ranks_html.value = report._repr_html_() if report is not None and len(ranks) > 1 else ""

    def draw_rank(self, index: int) -> None:
        """One rank's replacement log, memory and (after a run) timing; -1: the session's own views."""
        report = self.rank_report
        if report is None or index < 0 or index >= len(report.rows):
            if self.session_views is not None:
                self.show_session(*self.session_views)
            return
        self.draw_replacements(report.replacements[index])
        self.memory_plot.value = _img(report.memory[index].plot(), f"memory by phase, {report.rows[index].label}")
        self.memory_html.value = report.memory[index]._repr_html_()
        timing = self.run_results.timing
        if timing is not None and index < len(timing.ranks):
            self.timing_html.value = (f"<details open><summary>vLLM per-module profile, {escape(report.rows[index].label)}"
                                      f"</summary>{timing.ranks[index]._repr_html_()}</details>")

    def _on_rank(self, change) -> None:
        self._redraw(lambda: self.draw_rank(change["new"]))

    def draw_replacements(self, log: ReplacementLog) -> None:
        self.log = log
        self.shown_counts = log.counts()
        self.replacements_plot.value = _img(log.plot(), "replacement counts")
        actions, rows = count_rows(log)
        self.counts_html.value = table(
            ["original class", *actions, "total", "becomes"],
            [[c] + [per.get(a, 0) for a in actions] + [total, new or "-"] for c, per, total, new in rows],
            align="l" + "r" * (len(actions) + 1) + "l", css_class="hvl-dashboard-counts")
        classes = [ALL_CLASSES] + [c for c, *_ in rows]
        keep = self.class_filter.value if self.class_filter.value in classes else ALL_CLASSES
        with self.class_filter.hold_trait_notifications():
            self.class_filter.options = classes
            self.class_filter.value = keep
        self.draw_records()
        self.replacements_html.value = log._repr_html_()

    def draw_records(self) -> None:
        """The records of the class chosen in the filter."""
        if self.log is None:
            return
        chosen = self.class_filter.value
        records = [r for r in self.log.records if chosen == ALL_CLASSES or r.original_class == chosen]
        rows = [[r.name, r.kind, status_badge(r.action), r.original_class, fmt_opt(r.new_class),
                 _shape(r), fmt_count(r.parameters), r.reason] for r in records]
        self.records_html.value = (
            _note(f"{len(records)} of {len(self.log.records)} records ({chosen})")
            + table(["module", "kind", "action", "original class", "new class", "shape", "params", "reason"],
                    rows, align="lllllrrl", css_class="hvl-dashboard-records"))

    def show_run(self, run: RunResults) -> None:
        """The Timing and Parity tabs from one run (or, under HF attention, its refusal and scores)."""
        self.run_results = run
        self.draw_timing(run)
        self.draw_parity(run)
        self.attention_message.value = "" if run.comparison is not None else _note(_refusal(run), "#bf360c")

    def draw_timing(self, run: RunResults) -> None:
        self.draw_timing_plot()
        if run.comparison is None:
            self.timing_html.value = _note(_refusal(run), "#bf360c")
            return
        profile = run.timing._repr_html_() if run.timing is not None else ""
        self.timing_html.value = f"<details><summary>vLLM per-module profile (profile())</summary>{profile}</details>"

    def draw_timing_plot(self) -> None:
        """HF vs vLLM per-module time for the phase chosen in the toggle."""
        cmp = self.run_results.comparison
        if cmp is None:
            self.timing_plot.value = ""
            return
        self.timing_plot.value = _img(cmp.plot(self.phase.value), f"HF vs vLLM, {self.phase.value}")

    def draw_parity(self, run: RunResults) -> None:
        """The Parity tab, whole: everything it shows is drawn here."""
        if run.comparison is None:
            rows = [[g.prompt, len(g.prompt_token_ids), g.text] for g in (run.scores or [])]
            scored = table(["prompt", "prompt tokens", "next token"], rows, align="lrl",
                           css_class="hvl-dashboard-scores")
            self.parity_html.value = _note(_refusal(run), "#bf360c") + scored
            return
        note = _note(run.bisect_note) if run.bisect_note else ""
        kl = ""
        teacher = run.comparison.teacher
        if teacher is not None and teacher.judged is not None:
            from hfvllm_lab.render.plots import plot_teacher_forced

            kl = _img(plot_teacher_forced(teacher), "teacher-forced KL per position with the noise floor")
        self.parity_html.value = note + kl + run.comparison._repr_html_()

    def set_diagnose_progress(self, done: int, total: int, label: str) -> None:
        self.diagnose_progress.max = max(total, 1)
        self.diagnose_progress.value = done
        self.diagnose_progress.description = label[:40]

    def show_diagnosis(self, diagnosis: Diagnosis) -> None:
        """The Diagnose tab: every arm against its floor, then the lens table and each lens' arms."""
        self.diagnose_plot.value = _img(diagnosis.plot(), "diagnosis: every arm against its noise floor")
        self.diagnose_html.value = diagnosis._repr_html_()

    def _on_filter(self, _change) -> None:
        self._redraw(self.draw_records)

    def _on_phase(self, _change) -> None:
        self._redraw(self.draw_timing_plot)

    # -- static fallback ----------------------------------------------------------------
    def static_html(self) -> str:
        """The tabs' current contents as one HTML fragment (no widgets needed)."""
        header = self.static_header()
        parts = [header] if header else []
        if self.error.value:
            parts.append(self.error.value)
        for title in TAB_TITLES:
            inner = "".join(c.value for c in self.tab_children[title].children if isinstance(c, w.HTML))
            parts.append(f'<section class="hvl-dashboard-section"><h3 style="font-size:14px;margin:10px 0 4px 0">'
                         f"{escape(title)}</h3>{inner}</section>")
        return f'<div class="hvl hvl-dashboard">{"".join(parts)}</div>'

    def _repr_html_(self) -> str:
        return self.static_html()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _refusal(run: RunResults) -> str:
    return (f"attention={run.attention_path!r}: compare(), generate() and profile() are refused by design; "
            f"scored the prompts instead (score()). {run.refusal}")


__all__ = ["DashboardView", "ControlChoices", "RunResults", "TAB_TITLES"]
