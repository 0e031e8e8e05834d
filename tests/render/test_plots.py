"""Matplotlib figures: types, axes and bar counts; base64 embedding."""

from __future__ import annotations

import base64
import re

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from hfvllm_lab.render import html, plots  # noqa: E402
from hfvllm_lab.results.timing import LayerTiming  # noqa: E402
from . import fixtures  # noqa: E402


def bars(ax) -> int:
    return sum(len(c) for c in ax.containers)


def test_replacement_counts_stack_by_action():
    log = fixtures.replacement_log()
    fig = plots.plot_replacement_counts(log)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    classes, actions = len(log.counts()), 6  # replaced, fused, tied, routed, kept, elsewhere all present
    assert len(ax.containers) == actions and bars(ax) == classes * actions
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["replaced", "fused", "tied", "routed", "kept",
                                                                        "elsewhere"]
    assert log.plot() is not None


def test_memory_tensor_and_process_panels():
    report = fixtures.memory_report()
    fig = plots.plot_memory(report)
    assert len(fig.axes) == 2
    tensor_ax, process_ax = fig.axes
    # params and kv cache stacked per phase, exact bytes on their own scale
    assert len(tensor_ax.containers) == 2 and bars(tensor_ax) == 2 * len(report.phases)
    labels = [t.get_text() for t in tensor_ax.get_legend().get_texts()]
    assert sorted(labels) == ["eager init params", "kv cache", "params"]
    assert tensor_ax.get_ylabel() == "GiB"
    # the process figure, labelled with its source
    assert len(process_ax.containers) == 1 and bars(process_ax) == len(report.phases)
    assert "process (process RSS (psutil))" in [t.get_text() for t in process_ax.get_legend().get_texts()]
    assert "process RSS (psutil)" in process_ax.get_title()
    assert isinstance(report.plot(), Figure)


def test_memory_into_a_given_axes_draws_the_tensor_panel():
    fig = Figure()
    ax = fig.add_subplot()
    assert plots.plot_memory(fixtures.memory_report(), ax=ax) is fig
    assert len(fig.axes) == 1 and "tensor" in ax.get_title()


def test_timing_both_phases_side_by_side_or_one():
    timing = fixtures.layer_timing()
    fig = plots.plot_timing(timing)
    assert len(fig.axes) == 2
    top_level = 5  # embedding, two layers, final norm, lm head
    assert all(bars(ax) == top_level for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "embed_tokens", "layers.0", "layers.1", "norm", "lm_head"]
    assert len(plots.plot_timing(timing, phase="prefill").axes) == 1
    decode_only = LayerTiming("vllm", "cpu", "perf_counter", rows=timing.phase_rows("decode"),
                              steps={"decode": 30}, step_seconds={"decode": 0.004})
    assert len(decode_only.plot().axes) == 1


def test_timing_into_a_given_axes():
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plots.plot_timing(fixtures.layer_timing(), ax=ax) is fig
    assert "decode" in ax.get_title() and bars(ax) == 5


def test_comparison_has_time_and_logprob_axes():
    cmp = fixtures.comparison()
    fig = cmp.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    time_ax, diff_ax = fig.axes
    assert len(time_ax.containers) == 2 and bars(time_ax) == 2 * 5
    assert len(diff_ax.get_lines()) >= len(cmp.prompts)
    assert len(plots.plot_comparison(cmp, phase="prefill").axes) == 2


def test_figure_to_img_tag_embeds_png():
    tag = html.figure_to_img_tag(plots.plot_memory(fixtures.memory_report()))
    m = re.fullmatch(r'<img class="hvl-figure" alt="figure" src="data:image/png;base64,([A-Za-z0-9+/=]+)"/>', tag)
    assert m and base64.b64decode(m.group(1)).startswith(b"\x89PNG")


def test_empty_objects_still_plot():
    from hfvllm_lab.results.comparison import Comparison
    from hfvllm_lab.results.memory import MemoryPhase, MemoryReport
    from hfvllm_lab.results.replacements import ReplacementLog

    assert len(plots.plot_replacement_counts(ReplacementLog("m", "lab", "X")).axes) == 1
    none = MemoryReport("m", "cpu", "lab", [MemoryPhase("before", None, None, None, None, "")])
    assert len(plots.plot_memory(none).axes) == 2
    assert len(plots.plot_timing(LayerTiming("vllm", "cpu", "perf_counter")).axes) == 1
    assert len(plots.plot_comparison(Comparison("m", "cpu", "float32")).axes) == 2


def test_teacher_forced_kl_per_position_with_the_noise_band():
    teacher = fixtures.teacher_forced(ratio=3.0)
    fig = teacher.plot()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    # one judged line per sequence, its points at 3x the band; one band per sequence
    lines = [line for line in ax.get_lines() if line.get_marker() == "."]
    assert [len(line.get_xdata()) for line in lines] == [4, 3]
    assert lines[0].get_ydata()[1] == pytest.approx(3e-3)
    assert len(ax.collections) >= 2
    # exact agreement (KL 0) sits at the bottom of the axis, not at 1e-300
    assert ax.get_ylim()[0] > 1e-11
    assert "beyond noise" in ax.get_title()
