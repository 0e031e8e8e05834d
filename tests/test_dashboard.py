"""The dashboard's controller keeps its Session while the controls still describe it, and a rebuild
carries every argument of the Session it replaces."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("ipywidgets")

from hfvllm_lab.dashboard import Dashboard  # noqa: E402
from hfvllm_lab.session import Session  # noqa: E402


def click(dash: Dashboard, **controls) -> None:
    for name, value in controls.items():
        getattr(dash, name).value = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dash.run_button.click()
    assert dash.last_error is None, dash.error.value


def test_a_second_run_on_the_real_bf16_model_reuses_its_session(real_model_dir):
    """dtype "auto" resolves to the checkpoint's bfloat16; it was once compared with the CPU default
    (float32), so every Run rebuilt the engine."""
    dash = Dashboard()
    try:
        assert dash.dtype.value == "auto"
        click(dash, model="smollm2-135m", prompts="The capital of France is", max_tokens=1)
        first = dash.session
        assert first.dtype == "bfloat16" and first.arguments["dtype"] is None
        click(dash)
        assert dash.session is first and not first.closed
        assert dash.comparison is not None and dash.comparison.dtype == "bfloat16"
    finally:
        if dash.session is not None:
            dash.session.close()


def test_a_rebuild_keeps_the_arguments_no_control_shows():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = Session("llama", mode="fast", trust_remote_code=True, max_model_len=128,
                          engine_args={"hf_overrides": {"lab_fuse": False}})
    dash = Dashboard(session=session)
    try:
        click(dash, model="qwen3", max_tokens=2)
        rebuilt = dash.session
        assert rebuilt is not session and session.closed and rebuilt.model_name == "qwen3"
        assert rebuilt.mode == "fast" and rebuilt.trust_remote_code is True
        assert rebuilt.settings.max_model_len == 128
        assert rebuilt.replacements.options["fusions and CPU kernels"].startswith("off")
        assert "bisect unavailable" in dash.bisect_note  # fast mode: compare ran without bisect
    finally:
        dash.session.close()


def test_the_diagnose_tab_runs_the_chosen_lenses_with_progress():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = Session("llama")
    dash = Dashboard(session=session)
    try:
        assert "Diagnose" in list(dash.tabs.titles) and "press Diagnose" in dash.diagnose_html.value
        dash.lens_choice.value = ("decode", "batch")
        dash.prompts.value = "Hello world\nThe quick brown fox"
        dash.diagnose_button.click()
        assert dash.last_error is None, dash.error.value
        d = dash.diagnosis
        assert d is not None and [lens.name for lens in d.lenses] == ["decode", "batch"]
        assert dash.session is session  # the controls did not change: the same Session diagnosed
        assert dash.diagnose_progress.value == dash.diagnose_progress.max == 4
        assert dash.diagnose_progress.description == "done"
        assert "hvl-lenses" in dash.diagnose_html.value and "data:image/png;base64," in dash.diagnose_plot.value
        assert "Diagnose" in dash.static_html() and not dash.diagnose_button.disabled
        dash.lens_choice.value = ()
        dash.diagnose_button.click()
        assert isinstance(dash.last_error, ValueError) and "at least one lens" in dash.error.value
    finally:
        dash.session.close()
