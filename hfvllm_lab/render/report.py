"""A standalone HTML report of one Session's results, plots embedded (no files beside it)."""

from __future__ import annotations

from hfvllm_lab.render.html import figure_to_img_tag, report_html


def session_report_html(title: str, replacements, memory, attention, comparison=None) -> str:
    sections: list[tuple[str, str]] = []
    if comparison is not None:
        sections.append(("HF-native vs vLLM", comparison._repr_html_() + figure_to_img_tag(comparison.plot(),
                                                                                          alt="per-layer time")))
        for path, timing in comparison.timing.items():
            sections.append((f"Per-layer timing: {path}", timing._repr_html_() + figure_to_img_tag(timing.plot(),
                                                                                                  alt=f"{path} timing")))
    sections.append(("Replacements", replacements._repr_html_() + figure_to_img_tag(replacements.plot(),
                                                                                  alt="replacement counts")))
    sections.append(("Memory", memory._repr_html_() + figure_to_img_tag(memory.plot(), alt="memory by phase")))
    sections.append(("Attention", attention._repr_html_()))
    return report_html(title, sections)
