"""The dashboard's controller, beside the Session: it builds Sessions from the controls, runs
`compare()` (or `score()` under HF attention), steps the progress bar, catches a run's errors (shown,
and kept in `.last_error`) and hands the results to the view, `render/widgets.py`, which only draws.

    from hfvllm_lab import Session
    Session("gemma").dashboard()          # the widget; or Dashboard().widget to start from the controls
"""

from __future__ import annotations

from hfvllm_lab import zoo
from hfvllm_lab.device import checkpoint_dtype, choose_dtype, resolve_device
from hfvllm_lab.diagnose.lenses import LENSES
from hfvllm_lab.errors import AttentionPathError, ProbeUnavailableError
from hfvllm_lab.paths.vllm_path import BACKENDS
from hfvllm_lab.render.widgets import TAB_TITLES, ControlChoices, DashboardView, RunResults
from hfvllm_lab.session import ATTENTION_PATHS, DEFAULT_PROMPTS, Session

STEPS = ("build session", "compare", "profile", "render")
DEVICES = ("auto", "cpu", "cuda", "mlu")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class Dashboard:
    """Controls (model, device, dtype, backend, attention, prompts, max tokens), a Run button with a
    progress bar and an error area, and tabs: Replacements, Memory, Attention, Timing, Parity, Diagnose.

    `run()` (what the button calls) builds a new Session through `session_factory` when the controls
    differ from the current session's settings (the old one is closed by the new Session), runs
    `compare(prompts, max_tokens, bisect=True)` (which also profiles the vLLM path), and fills the
    tabs. Under HF attention (sdpa/eager) compare is refused by design; the dashboard then scores the
    prompts and shows the attention report with the refusal instead of Parity/Timing. `diagnose()` (the
    Diagnose tab's button) runs the chosen lenses on the same Session, with a progress bar per lens.

    `.widget` is what a notebook displays; `.view` draws it. The view's controls and tabs are
    reachable here too (`dash.max_tokens.value = 4`, `dash.parity_html.value`).
    """

    def __init__(self, session: Session | None = None, *, session_factory=Session) -> None:
        self.session = session
        self.session_factory = session_factory
        self.results = RunResults()  # what the last run produced
        self.last_error: BaseException | None = None
        self.view = DashboardView(self._choices())
        self.view.report_error = self._show_error
        self.view.static_header = self._session_card
        self.view.run_button.on_click(self._on_run)
        self.view.diagnose_button.on_click(self._on_diagnose)
        self.diagnosis = None  # the last Diagnose result
        self.widget = self.view.widget
        if session is not None:
            self._guard(self._show_session)

    def _choices(self) -> ControlChoices:
        s = self.session
        return ControlChoices(
            model=s.model_name if s is not None else zoo.DEFAULT, models=zoo.names(include_real=True),
            device=s.device if s is not None else "auto", devices=DEVICES,
            dtype=s.dtype if s is not None else "auto", dtypes=DTYPES,
            backend=s.backend if s is not None else "lab", backends=BACKENDS,
            attention=s.attention_path if s is not None else "vllm", attentions=ATTENTION_PATHS,
            prompts=DEFAULT_PROMPTS, max_tokens=8, steps=len(STEPS), lenses=tuple(LENSES),
        )

    def __getattr__(self, name: str):
        # The view's controls and tabs (model, max_tokens, run_button, parity_html, ...), and what
        # it last drew (log, shown_counts).
        view = self.__dict__.get("view")
        if view is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return getattr(view, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    # -- the last run's results -----------------------------------------------------------
    @property
    def comparison(self):
        """The last run's Comparison (None when it only scored)."""
        return self.results.comparison

    @property
    def timing(self):
        """The vLLM per-module profile of the last run's compare()."""
        return self.results.timing

    @property
    def scores(self):
        """Generations of score() when the last run could only score (HF attention)."""
        return self.results.scores

    @property
    def refusal(self) -> str:
        return self.results.refusal

    @property
    def bisect_note(self) -> str:
        return self.results.bisect_note

    # -- running --------------------------------------------------------------------------
    def _on_run(self, _button=None) -> None:
        self.run()

    def _on_diagnose(self, _button=None) -> None:
        self.diagnose()

    def diagnose(self) -> bool:
        """What Diagnose does: the current Session (built first from the controls when they changed)
        runs the chosen lenses on the prompts; progress per lens; errors in the error area."""
        self.view.clear_error()
        self.last_error = None
        self.view.set_busy(True)
        self.view.diagnose_button.disabled = True
        try:
            return self._guard(self._diagnose)
        finally:
            self.view.diagnose_button.disabled = False
            self.view.set_busy(False)

    def _diagnose(self) -> None:
        cfg = self.settings()
        if self._needs_new_session(cfg):
            args = self.session_arguments(cfg)
            self.session = self.session_factory(args.pop("model"), **args)
            self._show_session()
        lenses = list(self.view.lens_choice.value)
        if not lenses:
            raise ValueError("choose at least one lens")
        self.diagnosis = self.session.diagnose(self.prompt_list(), lenses=lenses,
                                               progress=self.view.set_diagnose_progress)
        self.view.show_diagnosis(self.diagnosis)

    def _show_error(self, exc: BaseException) -> None:
        self.last_error = exc
        self.view.show_error(exc)

    def _guard(self, fn, *args) -> bool:
        try:
            fn(*args)
        except Exception as exc:  # shown in the error area, kept in .last_error
            self._show_error(exc)
            return False
        return True

    def settings(self) -> dict:
        """The control values as Session arguments."""
        v = self.view.values()
        return dict(model=v["model"] or None, device=v["device"], dtype=None if v["dtype"] == "auto" else v["dtype"],
                    backend=v["backend"], attention=v["attention"])

    def prompt_list(self) -> list[str]:
        return self.view.values()["prompts"]

    def _needs_new_session(self, cfg: dict) -> bool:
        """Whether the controls ask for something the current Session is not: each control resolved
        as a new Session would resolve it (dtype "auto" follows the checkpoint, as Session does)."""
        from transformers import AutoConfig

        s = self.session
        if s is None or s.closed:
            return True
        device = resolve_device(cfg["device"])
        model_dir = zoo.resolve(cfg["model"])
        if (model_dir, device, cfg["backend"], cfg["attention"]) != (s.model_dir, s.device, s.backend, s.attention_path):
            return True
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=s.trust_remote_code)
        return choose_dtype(cfg["dtype"], device, checkpoint_dtype(config))[0] != s.dtype

    def session_arguments(self, cfg: dict) -> dict:
        """A rebuild keeps every argument of the Session it replaces (trust_remote_code, mode,
        engine_args, max_model_len, ...) and changes only what the controls set."""
        base = dict(self.session.arguments) if self.session is not None else {}
        return {**base, **cfg}

    def run(self) -> bool:
        """What Run does; True on success. Errors are shown in the error area (type, message and a
        collapsible traceback) and kept in `.last_error`; the previous session stays in place when
        building a new one fails."""
        self.view.clear_error()
        self.last_error = None
        self.view.set_busy(True)
        try:
            return self._guard(self._run)
        finally:
            self.view.set_busy(False)

    def _run(self) -> None:
        step = self.view.set_progress
        step(0, STEPS[0])
        cfg = self.settings()
        values = self.view.values()
        prompts, max_tokens = values["prompts"], values["max_tokens"]
        if self._needs_new_session(cfg):
            args = self.session_arguments(cfg)
            self.session = self.session_factory(args.pop("model"), **args)
        session = self.session
        step(1, STEPS[1])
        results = self.results = RunResults(attention_path=session.attention_path)
        if session.attention_path != "vllm":
            # HF attention inside the vLLM path only scores prompts: compare() is refused by
            # design; show that refusal and score instead. Any other error is a real failure.
            try:
                session.compare(prompts, max_tokens)
            except AttentionPathError as exc:
                results.refusal = str(exc)
            results.scores = session.score(prompts)
        else:
            try:
                results.comparison = session.compare(prompts, max_tokens, bisect=True)
            except ProbeUnavailableError as exc:  # e.g. the native backend: compare without bisect
                results.bisect_note = f"bisect unavailable: {exc}"
                results.comparison = session.compare(prompts, max_tokens)
        step(2, STEPS[2] if results.comparison is not None else f"{STEPS[2]} (skipped)")
        if results.comparison is not None:
            results.timing = results.comparison.timing.get("vllm")  # compare() already profiled
        step(3, STEPS[3])
        self._show_session()
        self.view.show_run(results)
        step(4, "done")

    def _show_session(self) -> None:
        """Replacements, Memory and Attention of the current session, drawn by the view."""
        s = self.session
        self.view.show_session(s.replacements, s.memory, s.attention)
        self.view.show_ranks(s.ranks if s.settings.layout.world > 1 else None)

    # -- display --------------------------------------------------------------------------
    def _session_card(self) -> str:
        return self.session._repr_html_() if self.session is not None else ""

    def static_html(self) -> str:
        """The tabs' current contents as one HTML fragment (no widgets needed)."""
        return self.view.static_html()

    def _repr_html_(self) -> str:
        return self.static_html()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


__all__ = ["Dashboard", "STEPS", "TAB_TITLES"]
