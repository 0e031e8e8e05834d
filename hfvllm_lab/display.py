"""The one door from result objects to their renderers: `text(obj)`, `html(obj)`, `plot(obj, **kw)`.

Results stay plain data: their `__repr__`, `_repr_html_` and `plot` call these functions (imported
inside the method), and this module imports the renderer only when asked to draw. Dispatch is by
the result's class, named here as `module.Class` strings, so neither this module nor the
renderers import the results at run time and data flows one way: results -> display -> render.

    from hfvllm_lab import display
    display.text(session.memory)              # the same string as repr(session.memory)
    display.text(session.replacements, "tree")
    display.plot(comparison, phase="prefill")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_R = "hfvllm_lab.results."
# (result class, variant) -> (render module, function name)
TEXT: dict[tuple[str, str], tuple[str, str]] = {
    (_R + "replacements.ReplacementLog", ""): ("text", "replacement_log_text"),
    (_R + "replacements.ReplacementLog", "tree"): ("text", "replacement_tree_text"),
    (_R + "memory.MemoryReport", ""): ("text", "memory_text"),
    (_R + "attention.AttentionReport", ""): ("text", "attention_text"),
    (_R + "timing.LayerTiming", ""): ("text", "timing_text"),
    (_R + "comparison.BisectResult", ""): ("text", "bisect_text"),
    (_R + "comparison.Comparison", ""): ("text", "comparison_text"),
    (_R + "teacher.TeacherForced", ""): ("text", "teacher_text"),
    (_R + "rollout.Rollout", ""): ("rollout", "rollout_text"),
    (_R + "diagnosis.Diagnosis", ""): ("diagnosis", "diagnosis_text"),
    (_R + "reference.ReferenceComparison", ""): ("reference", "reference_text"),
    (_R + "ranks.RankReport", ""): ("ranks", "rank_report_text"),
}
HTML: dict[tuple[str, str], tuple[str, str]] = {
    (_R + "replacements.ReplacementLog", ""): ("html", "replacement_log_html"),
    (_R + "memory.MemoryReport", ""): ("html", "memory_html"),
    (_R + "attention.AttentionReport", ""): ("html", "attention_html"),
    (_R + "timing.LayerTiming", ""): ("html", "timing_html"),
    (_R + "comparison.BisectResult", ""): ("html", "bisect_html"),
    (_R + "comparison.Comparison", ""): ("html", "comparison_html"),
    (_R + "generation.Generation", ""): ("html", "generation_html"),
    (_R + "teacher.TeacherForced", ""): ("html", "teacher_html"),
    (_R + "rollout.Rollout", ""): ("rollout", "rollout_html"),
    (_R + "diagnosis.Diagnosis", ""): ("diagnosis", "diagnosis_html"),
    (_R + "reference.ReferenceComparison", ""): ("reference", "reference_html"),
    (_R + "ranks.RankReport", ""): ("ranks", "rank_report_html"),
}
PLOT: dict[tuple[str, str], tuple[str, str]] = {
    (_R + "replacements.ReplacementLog", ""): ("plots", "plot_replacement_counts"),
    (_R + "memory.MemoryReport", ""): ("plots", "plot_memory"),
    (_R + "timing.LayerTiming", ""): ("plots", "plot_timing"),
    (_R + "comparison.Comparison", ""): ("plots", "plot_comparison"),
    (_R + "teacher.TeacherForced", ""): ("plots", "plot_teacher_forced"),
    (_R + "rollout.Rollout", ""): ("rollout", "plot_rollout"),
    (_R + "diagnosis.Diagnosis", ""): ("diagnosis", "plot_diagnosis"),
    (_R + "reference.ReferenceComparison", ""): ("reference", "plot_reference"),
}


def _renderer(table: dict[tuple[str, str], tuple[str, str]], obj: Any, variant: str, what: str):
    for cls in type(obj).__mro__:  # subclasses of a result render like it
        entry = table.get((f"{cls.__module__}.{cls.__qualname__}", variant))
        if entry is not None:
            module, name = entry
            return getattr(import_module(f"hfvllm_lab.render.{module}"), name)
    shown = f"{what} ({variant})" if variant else what
    raise TypeError(f"no {shown} renderer for {type(obj).__qualname__}")


def text(obj: Any, variant: str = "") -> str:
    """Plain text (what `repr()` shows); `variant="tree"` gives a replacement log's module tree."""
    return _renderer(TEXT, obj, variant, "text")(obj)


def html(obj: Any, variant: str = "") -> str:
    """A self-contained HTML fragment (what Jupyter shows)."""
    return _renderer(HTML, obj, variant, "html")(obj)


def plot(obj: Any, *, variant: str = "", **kwargs: Any):
    """A matplotlib Figure; keyword arguments (`ax`, `phase`) go to the plot function."""
    return _renderer(PLOT, obj, variant, "plot")(obj, **kwargs)


__all__ = ["text", "html", "plot"]
