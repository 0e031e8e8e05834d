"""The ipywidgets dashboard, headless, on real Sessions (no mocks): controls drive `run()` through
the Run button, and the tabs follow the session the run built. The controller is
`hfvllm_lab.dashboard.Dashboard`; the view it drives (`render/widgets.py`) also draws plain results
without any Session."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from hfvllm_lab.errors import ModelNotFoundError  # noqa: E402
from hfvllm_lab.dashboard import STEPS, Dashboard  # noqa: E402
from hfvllm_lab.render.widgets import TAB_TITLES  # noqa: E402
from hfvllm_lab.session import Session  # noqa: E402


def tab_titles(dash: Dashboard) -> list[str]:
    return list(dash.tabs.titles)


def click(dash: Dashboard, **controls) -> None:
    for name, value in controls.items():
        getattr(dash, name).value = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "closing the previous Session"
        dash.run_button.click()


@pytest.fixture(scope="module")
def dash():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = Session("llama")
    d = Dashboard(session=session)
    yield d
    if d.session is not None:
        d.session.close()


def test_a_session_fills_the_session_tabs_before_any_run(dash):
    assert tab_titles(dash) == list(TAB_TITLES)
    assert dash.model.value == "llama" and dash.device.value == "cpu" and dash.dtype.value == "float32"
    assert "LlamaRMSNorm" in dash.replacements_html.value
    assert dash.shown_counts == dash.session.replacements.counts()
    assert "data:image/png;base64," in dash.replacements_plot.value
    assert "data:image/png;base64," in dash.memory_plot.value and "hvl-memory" in dash.memory_html.value
    assert "hvl-attention" in dash.attention_html.value
    assert "press Run" in dash.parity_html.value
    assert dash.error.value == ""


def test_run_builds_the_new_session_and_fills_every_tab(dash):
    old = dash.session
    click(dash, model="gemma", max_tokens=4)
    assert dash.last_error is None, dash.error.value
    s = dash.session
    assert s is not old and old.closed and not s.closed
    assert s.model_name == "gemma" and s.attention_path == "vllm"
    assert dash.progress.value == dash.progress.max == len(STEPS)
    # Replacements: the gemma log, its counts, and the class filter over its classes
    assert "GemmaRMSNorm" in dash.replacements_html.value and "LlamaRMSNorm" not in dash.replacements_html.value
    counts = s.replacements.counts()
    assert dash.shown_counts == counts
    for cls, per in counts.items():
        assert cls in dash.counts_html.value
        assert f">{sum(per.values())}</td>" in dash.counts_html.value
    assert list(dash.class_filter.options)[1:] and set(list(dash.class_filter.options)[1:]) == set(counts)
    dash.class_filter.value = "GemmaRMSNorm"
    n = sum(counts["GemmaRMSNorm"].values())
    assert f"{n} of {len(s.replacements.records)} records" in dash.records_html.value
    assert "q_proj" not in dash.records_html.value and "input_layernorm" in dash.records_html.value
    # Parity: the compare result with bisect; Timing: HF vs vLLM figure per phase
    cmp = dash.comparison
    assert cmp is not None and cmp.model == "gemma" and cmp.ok
    assert cmp.bisect is not None and cmp.bisect.first_divergent is None and cmp.bisect.rows
    assert all(len(p.vllm.token_ids) == 4 for p in cmp.prompts)
    assert "Comparison: gemma" in dash.parity_html.value and "hvl-steps" in dash.parity_html.value
    assert "hvl-bisect" in dash.parity_html.value
    decode_png = dash.timing_plot.value
    assert "data:image/png;base64," in decode_png
    dash.phase.value = "prefill"
    assert "data:image/png;base64," in dash.timing_plot.value and dash.timing_plot.value != decode_png
    assert dash.timing is not None and "hvl-timing" in dash.timing_html.value
    # Memory and attention follow the new session
    assert "MemoryReport: gemma" in dash.memory_html.value
    assert "CPU_ATTN" in dash.attention_html.value
    # the static rendering tells the same story
    static = dash.static_html()
    assert all(t in static for t in TAB_TITLES) and "Comparison: gemma" in static


def test_same_settings_reuse_the_session(dash):
    s = dash.session
    click(dash, max_tokens=2)
    assert dash.last_error is None, dash.error.value
    assert dash.session is s and all(len(p.vllm.token_ids) == 2 for p in dash.comparison.prompts)


def test_invalid_model_shows_the_error_and_keeps_the_session(dash):
    s = dash.session
    click(dash, model="no-such-model")
    assert isinstance(dash.last_error, ModelNotFoundError)
    assert "ModelNotFoundError" in dash.error.value and "no-such-model" in dash.error.value
    assert dash.session is s and not s.closed
    assert "GemmaRMSNorm" in dash.replacements_html.value  # tabs untouched
    assert not dash.run_button.disabled
    assert s.score(["still usable"])[0].prompt_token_ids
    # the next good run clears the error
    click(dash, model="gemma")
    assert dash.error.value == "" and dash.last_error is None


def test_hf_attention_shows_the_attention_report_instead_of_parity(dash):
    click(dash, model="gemma", attention="sdpa", prompts="Hello world\nThe capital of France is")
    assert dash.last_error is None, dash.error.value
    s = dash.session
    assert s.attention_path == "sdpa"
    assert dash.comparison is None and dash.timing is None and len(dash.scores) == 2
    assert "selected sdpa" in dash.attention_html.value and "sdpa" in dash.attention_html.value
    assert "refused by design" in dash.attention_message.value
    assert "refused by design" in dash.parity_html.value and "Hello world" in dash.parity_html.value
    assert "refused by design" in dash.timing_html.value and dash.timing_plot.value == ""


def test_session_dashboard_returns_the_widget_with_a_static_fallback(dash):
    import ipywidgets as w

    widget = dash.session.dashboard()
    assert isinstance(widget, w.VBox)
    tabs = [c for c in widget.children if isinstance(c, w.Tab)]
    assert len(tabs) == 1 and list(tabs[0].titles) == list(TAB_TITLES)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "Replacements" in bundle["text/html"]


def test_a_dashboard_without_session_waits_for_run():
    d = Dashboard()
    assert d.session is None and d.model.value == "llama"
    assert "no session yet" in d.replacements_html.value
    assert "Parity" in d._repr_html_()


def test_the_view_draws_plain_results_without_a_session():
    from hfvllm_lab.render.widgets import ControlChoices, DashboardView, RunResults

    from . import fixtures

    view = DashboardView(ControlChoices(
        model="m", models=["m"], device="cpu", devices=["cpu"], dtype="float32", dtypes=["float32"],
        backend="lab", backends=["lab"], attention="vllm", attentions=["vllm", "sdpa"], prompts=["a", "b"]))
    assert view.values()["prompts"] == ["a", "b"] and view.values()["max_tokens"] == 8
    clicks = []
    view.run_button.on_click(clicks.append)
    view.run_button.click()  # the view runs nothing: its owner wires the button
    assert len(clicks) == 1 and "press Run" in view.parity_html.value and view.error.value == ""
    log = fixtures.replacement_log()
    view.show_session(log, fixtures.memory_report(), fixtures.attention_report())
    assert view.shown_counts == log.counts() and "data:image/png;base64," in view.replacements_plot.value
    assert "hvl-memory" in view.memory_html.value and "hvl-attention" in view.attention_html.value
    cmp = fixtures.comparison()
    view.show_run(RunResults(comparison=cmp, timing=cmp.timing["vllm"]))
    assert f"Comparison: {cmp.model}" in view.parity_html.value and "hvl-timing" in view.timing_html.value
    decode_png = view.timing_plot.value
    view.phase.value = "prefill"
    assert "data:image/png;base64," in view.timing_plot.value and view.timing_plot.value != decode_png
    gen = cmp.prompts[0].vllm
    view.show_run(RunResults(scores=[gen], attention_path="sdpa", refusal="needs paged attention"))
    assert "refused by design" in view.parity_html.value and gen.prompt in view.parity_html.value
    assert "needs paged attention" in view.attention_message.value and view.timing_plot.value == ""
    assert all(t in view.static_html() for t in TAB_TITLES)
