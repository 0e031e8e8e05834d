"""An ipywidgets 8 dashboard over a `Session`: controls, a Run button, and one tab per result.

The widgets only read result objects and call their `plot()` / `_repr_html_()`; every number comes
from the Session. Figures go into `HTML` widgets as base64 `<img>` tags (they survive nbconvert and
show as `data:image/png` in the browser) and are cleared after use.

    from hfvllm_lab import Session
    Session("gemma").dashboard()          # or: Dashboard().widget to start from the controls
"""

from __future__ import annotations

import traceback
from html import escape

import ipywidgets as w

from hfvllm_lab import zoo
from hfvllm_lab.device import resolve_device, resolve_dtype
from hfvllm_lab.errors import AttentionPathError, ProbeUnavailableError
from hfvllm_lab.paths.vllm_path import BACKENDS
from hfvllm_lab.render.format import count_rows, fmt_count, fmt_opt
from hfvllm_lab.render.html import figure_to_img_tag, status_badge, table
from hfvllm_lab.session import ATTENTION_PATHS, DEFAULT_PROMPTS, Session

TAB_TITLES = ("Replacements", "Memory", "Attention", "Timing", "Parity")
STEPS = ("build session", "compare", "profile", "render")
DEVICES = ("auto", "cpu", "cuda", "mlu")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PHASES = ("prefill", "decode")
ALL_CLASSES = "(all classes)"
FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px"


def _note(text: str, color: str = "#555") -> str:
    return f'<div class="hvl-dashboard-note" style="{FONT};color:{color};margin:4px 0">{escape(text)}</div>'


def _img(fig, alt: str) -> str:
    """The figure as an `<img>` tag; the figure is cleared afterwards (it is not pyplot-managed)."""
    try:
        return figure_to_img_tag(fig, alt=alt)
    finally:
        fig.clear()


def _options(values, current) -> list[str]:
    values = list(values)
    if current is not None and current not in values:
        values.append(current)
    return values


class _DashboardBox(w.VBox):
    """The top-level container; it also carries a static `text/html` rendering of the results, so a
    notebook saved without widget state (nbconvert, GitHub) still shows them."""

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs) or {}
        dashboard = getattr(self, "_dashboard", None)
        if dashboard is not None:
            data["text/html"] = dashboard.static_html()
        return data


class Dashboard:
    """Controls (model, device, dtype, backend, attention, prompts, max tokens), a Run button with a
    progress bar and an error area, and tabs: Replacements, Memory, Attention, Timing, Parity.

    `run()` (what the button calls) builds a new Session through `session_factory` when the controls
    differ from the current session's settings (the old one is closed by the new Session), runs
    `compare(prompts, max_tokens, bisect=True)` and `profile(...)`, and fills the tabs. Under HF
    attention (sdpa/eager) compare is refused by design; the dashboard then scores the prompts and
    shows the attention report with the refusal instead of Parity/Timing.
    """

    def __init__(self, session: Session | None = None, *, session_factory=Session) -> None:
        self.session = session
        self.session_factory = session_factory
        self.comparison = None  # Comparison of the last run
        self.timing = None  # LayerTiming of the last run's profile()
        self.scores = None  # list[Generation] when the last run could only score
        self.refusal = ""  # why compare() was refused on the last run
        self.bisect_note = ""  # why the last compare ran without bisect
        self.log = None  # ReplacementLog shown
        self.shown_counts: dict[str, dict[str, int]] = {}
        self.last_error: BaseException | None = None
        self._build_controls()
        self._build_tabs()
        self.widget = _DashboardBox(children=[
            w.HTML('<div style="font-weight:700;font-size:14px">hfvllm_lab dashboard</div>'),
            self.controls, w.HBox([self.run_button, self.progress, self.status]), self.error, self.tabs,
        ])
        self.widget._dashboard = self
        self.run_button.on_click(self._on_run)
        self.class_filter.observe(self._on_filter, names="value")
        self.phase.observe(self._on_phase, names="value")
        self._placeholders()
        if session is not None:
            self._guard(self._render_session)

    # -- construction -------------------------------------------------------------------
    def _build_controls(self) -> None:
        s = self.session
        style = {"description_width": "80px"}
        model = s.model_name if s is not None else zoo.DEFAULT
        self.model = w.Combobox(value=model, options=list(zoo.names()), description="model", ensure_option=False,
                                placeholder="zoo name or checkpoint path", style=style)
        device = s.device if s is not None else "auto"
        self.device = w.Dropdown(options=_options(DEVICES, device), value=device, description="device", style=style)
        dtype = s.dtype if s is not None else "auto"
        self.dtype = w.Dropdown(options=_options(DTYPES, dtype), value=dtype, description="dtype", style=style)
        self.backend = w.Dropdown(options=list(BACKENDS), value=s.backend if s is not None else "lab",
                                  description="backend", style=style)
        self.attention = w.Dropdown(options=list(ATTENTION_PATHS), value=s.attention_path if s is not None else "vllm",
                                    description="attention", style=style)
        self.prompts = w.Textarea(value="\n".join(DEFAULT_PROMPTS), description="prompts", style=style,
                                  placeholder="one prompt per line", layout=w.Layout(width="520px", height="72px"))
        self.max_tokens = w.IntSlider(value=8, min=1, max=64, description="max tokens", style=style)
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="build the session if the settings changed, then compare and profile")
        self.progress = w.IntProgress(value=0, min=0, max=len(STEPS), description="idle",
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
        self.attention_message = w.HTML()
        self.attention_html = w.HTML()
        # Timing
        self.phase = w.ToggleButtons(options=list(PHASES), value="decode", description="phase",
                                     style={"description_width": "50px", "button_width": "80px"})
        self.timing_plot = w.HTML()
        self.timing_html = w.HTML()
        # Parity
        self.parity_html = w.HTML()
        self.tab_children = {
            "Replacements": w.VBox([self.replacements_plot, self.counts_html, self.class_filter, self.records_html,
                                    self.replacements_html]),
            "Memory": w.VBox([self.memory_plot, self.memory_html]),
            "Attention": w.VBox([self.attention_message, self.attention_html]),
            "Timing": w.VBox([self.phase, self.timing_plot, self.timing_html]),
            "Parity": w.VBox([self.parity_html]),
        }
        self.tabs = w.Tab(children=[self.tab_children[t] for t in TAB_TITLES], titles=TAB_TITLES)

    def _placeholders(self) -> None:
        empty = _note("no session yet: choose a model and press Run")
        for html in (self.replacements_html, self.memory_html, self.attention_html):
            html.value = empty
        self.timing_html.value = self.parity_html.value = _note("press Run to compare HF and vLLM")

    # -- running ------------------------------------------------------------------------
    def _on_run(self, _button=None) -> None:
        self.run()

    def _step(self, i: int, label: str) -> None:
        self.progress.value = i
        self.progress.description = label
        self.status.value = _note(f"{i}/{len(STEPS)}: {label}")

    def _show_error(self, exc: BaseException) -> None:
        self.last_error = exc
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.error.value = (
            f'<div class="hvl-dashboard-error" style="{FONT};color:#b71c1c;background:#ffebee;padding:4px 8px;'
            f'border-left:3px solid #b71c1c"><b>{escape(type(exc).__name__)}</b>: {escape(str(exc))}'
            f'<details><summary>traceback</summary><pre style="white-space:pre-wrap">{escape(tb)}</pre>'
            f"</details></div>")

    def _guard(self, fn, *args) -> bool:
        try:
            fn(*args)
        except Exception as exc:  # shown in the error area, kept in .last_error
            self._show_error(exc)
            return False
        return True

    def settings(self) -> dict:
        """The control values as Session arguments."""
        return dict(model=self.model.value.strip() or None, device=self.device.value,
                    dtype=None if self.dtype.value == "auto" else self.dtype.value,
                    backend=self.backend.value, attention=self.attention.value)

    def _needs_new_session(self, cfg: dict) -> bool:
        s = self.session
        if s is None or s.closed:
            return True
        device = resolve_device(cfg["device"])
        wanted = (zoo.resolve(cfg["model"]), device, resolve_dtype(cfg["dtype"], device), cfg["backend"],
                  cfg["attention"])
        return wanted != (s.model_dir, s.device, s.dtype, s.backend, s.attention_path)

    def prompt_list(self) -> list[str]:
        return [line.strip() for line in self.prompts.value.splitlines() if line.strip()]

    def run(self) -> bool:
        """What Run does; True on success. Errors are shown in the error area (type, message and a
        collapsible traceback) and kept in `.last_error`; the previous session stays in place when
        building a new one fails."""
        self.error.value = ""
        self.last_error = None
        self.run_button.disabled = True
        try:
            return self._guard(self._run)
        finally:
            self.run_button.disabled = False

    def _run(self) -> None:
        self._step(0, STEPS[0])
        cfg = self.settings()
        prompts, max_tokens = self.prompt_list(), int(self.max_tokens.value)
        if self._needs_new_session(cfg):
            self.session = self.session_factory(cfg.pop("model"), **cfg)
        session = self.session
        self._step(1, STEPS[1])
        self.comparison = self.timing = self.scores = None
        self.refusal = self.bisect_note = ""
        if session.attention_path != "vllm":
            # HF attention inside the vLLM path only scores prompts: compare() is refused by
            # design; show that refusal and score instead. Any other error is a real failure.
            try:
                session.compare(prompts, max_tokens)
            except AttentionPathError as exc:
                self.refusal = str(exc)
            self.scores = session.score(prompts)
        else:
            try:
                self.comparison = session.compare(prompts, max_tokens, bisect=True)
            except ProbeUnavailableError as exc:  # e.g. the native backend: compare without bisect
                self.bisect_note = f"bisect unavailable: {exc}"
                self.comparison = session.compare(prompts, max_tokens)
        self._step(2, STEPS[2] if self.comparison is not None else f"{STEPS[2]} (skipped)")
        if self.comparison is not None:
            self.timing = self.comparison.timing.get("vllm")  # compare() already profiled
        self._step(3, STEPS[3])
        self._render_session()
        self._render_run()
        self._step(4, "done")

    # -- rendering ----------------------------------------------------------------------
    def _render_session(self) -> None:
        """Replacements, Memory and Attention from the current session."""
        s = self.session
        log = s.replacements
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
        self._render_records()
        self.replacements_html.value = log._repr_html_()
        memory = s.memory
        self.memory_plot.value = _img(memory.plot(), "memory by phase")
        self.memory_html.value = memory._repr_html_()
        self.attention_html.value = s.attention._repr_html_()
        self.attention_message.value = ""

    def _render_records(self) -> None:
        if self.log is None:
            return
        chosen = self.class_filter.value
        records = [r for r in self.log.records if chosen == ALL_CLASSES or r.original_class == chosen]
        rows = [[r.name, r.kind, status_badge(r.action), r.original_class, fmt_opt(r.new_class),
                 "x".join(map(str, r.shape)) or "-", fmt_count(r.parameters), r.reason] for r in records]
        self.records_html.value = (
            _note(f"{len(records)} of {len(self.log.records)} records ({chosen})")
            + table(["module", "kind", "action", "original class", "new class", "shape", "params", "reason"],
                    rows, align="lllllrrl", css_class="hvl-dashboard-records"))

    def _render_timing_plot(self) -> None:
        if self.comparison is None:
            self.timing_plot.value = ""
            return
        self.timing_plot.value = _img(self.comparison.plot(self.phase.value), f"HF vs vLLM, {self.phase.value}")

    def _render_run(self) -> None:
        """Timing and Parity from the last run (or the refusal and scores under HF attention)."""
        self._render_timing_plot()
        if self.comparison is not None:
            profile = self.timing._repr_html_() if self.timing is not None else ""
            self.timing_html.value = (f"<details><summary>vLLM per-module profile (profile())</summary>"
                                      f"{profile}</details>")
            self.parity_html.value = (_note(self.bisect_note) if self.bisect_note else "") \
                + self.comparison._repr_html_()
            return
        s = self.session
        message = (f"attention={s.attention_path!r}: compare(), generate() and profile() are refused by design; "
                   f"scored the prompts instead (score()). {self.refusal}")
        self.attention_message.value = _note(message, "#bf360c")
        rows = [[g.prompt, len(g.prompt_token_ids), g.text] for g in (self.scores or [])]
        scored = table(["prompt", "prompt tokens", "next token"], rows, align="lrl", css_class="hvl-dashboard-scores")
        self.timing_html.value = _note(message, "#bf360c")
        self.parity_html.value = _note(message, "#bf360c") + scored

    def _on_filter(self, _change) -> None:
        self._guard(self._render_records)

    def _on_phase(self, _change) -> None:
        self._guard(self._render_timing_plot)

    # -- static fallback ----------------------------------------------------------------
    def static_html(self) -> str:
        """The tabs' current contents as one HTML fragment (no widgets needed)."""
        parts = [self.session._repr_html_()] if self.session is not None else []
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


__all__ = ["Dashboard", "TAB_TITLES", "STEPS"]
