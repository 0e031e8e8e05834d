"""Plain-text renderings against golden files. Rewrite them with `UPDATE_GOLDEN=1`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hfvllm_lab.render import format as fmt
from hfvllm_lab.render import ranks, text
from hfvllm_lab.results.attention import AttentionReport
from hfvllm_lab.results.comparison import Comparison
from hfvllm_lab.results.memory import MemoryReport
from hfvllm_lab.results.replacements import ReplacementLog
from hfvllm_lab.results.timing import LayerTiming
from . import fixtures

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "replacement_log": lambda: text.replacement_log_text(fixtures.replacement_log()),
    "replacement_tree": lambda: text.replacement_tree_text(fixtures.replacement_log()),
    "memory": lambda: text.memory_text(fixtures.memory_report()),
    "attention": lambda: text.attention_text(fixtures.attention_report()),
    "timing": lambda: text.timing_text(fixtures.layer_timing()),
    "comparison": lambda: text.comparison_text(fixtures.comparison()),
    "rank_report": lambda: ranks.rank_report_text(fixtures.rank_report()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_golden(name):
    out = CASES[name]() + "\n"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(out)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert out == path.read_text(), f"{name} differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


def test_reprs_go_through_the_text_renderers():
    log = fixtures.replacement_log()
    assert repr(log) == text.replacement_log_text(log)
    assert log.tree_text() == text.replacement_tree_text(log)
    assert repr(fixtures.memory_report()) == text.memory_text(fixtures.memory_report())
    assert repr(fixtures.attention_report()) == text.attention_text(fixtures.attention_report())
    assert repr(fixtures.layer_timing()) == text.timing_text(fixtures.layer_timing())
    assert repr(fixtures.comparison()) == text.comparison_text(fixtures.comparison())


def test_tree_marks_every_status_and_indents_by_depth():
    out = text.replacement_tree_text(fixtures.replacement_log())
    lines = out.splitlines()
    for marker in ("[R]", "[T]", "[A]", "[K]", "[ ]"):
        assert sum(line.startswith(marker) for line in lines) >= 1, marker
    q_proj = next(line for line in lines if "q_proj" in line)
    assert q_proj.startswith("[R]") and " " * 8 + "q_proj" in q_proj
    assert "Linear -> ReplicatedLinear" in q_proj and "4,096" in q_proj
    rotary = next(line for line in lines if "rotary_emb" in line)
    assert rotary.startswith("[K]") and fixtures.ROTARY_REASON in rotary


def test_comparison_marks_the_first_divergence():
    out = text.comparison_text(fixtures.comparison())
    assert "[3]" in out and "[28]" in out and "[30]" in out
    assert "MISMATCH" in out and "FAIL" in out
    assert "first divergent model.layers.1.mlp" in out


def test_empty_objects_render():
    assert "no replacement candidates" in text.replacement_log_text(ReplacementLog("m", "lab", "X"))
    assert "no module tree" in text.replacement_tree_text(ReplacementLog("m", "lab", "X"))
    assert "no phases" in text.memory_text(MemoryReport("m", "cpu", "lab"))
    assert "no attention layers" in text.attention_text(AttentionReport("vllm", "vllm", "requested"))
    assert "no timed steps" in text.timing_text(LayerTiming("vllm", "cpu", "perf_counter"))
    assert "PASS" in text.comparison_text(Comparison("m", "cpu", "float32"))


@pytest.mark.parametrize(("value", "expected"), [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (269_030_016, "256.57 MiB"),
    (1_207_959_552, "1.12 GiB"), (-2048, "-2.00 KiB"),
])
def test_fmt_bytes(value, expected):
    assert fmt.fmt_bytes(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (None, "-"), (0.0, "0 s"), (2.5, "2.500 s"), (0.0124, "12.40 ms"), (41e-6, "41.0 us"), (8e-8, "80 ns"),
])
def test_fmt_seconds(value, expected):
    assert fmt.fmt_seconds(value) == expected


def test_text_table_aligns_columns():
    out = fmt.text_table(["name", "n"], [["a", "1"], ["longer", "100"]], align="lr", indent="")
    assert out.splitlines() == ["name      n", "------  ---", "a         1", "longer  100"]


def test_wrapped_columns_wraps_long_rows():
    out = fmt.wrapped_columns([("step", [str(i) for i in range(60)]), ("tok", ["12345"] * 60)], width=40)
    blocks = out.split("\n\n")
    assert len(blocks) > 1 and all(len(line) <= 40 for line in out.splitlines())


def test_long_prompts_are_cut_and_length_mismatch_is_marked():
    from hfvllm_lab.parity import TokenParity
    from hfvllm_lab.results.comparison import PromptComparison
    from hfvllm_lab.results.generation import Generation

    hf = Generation("p" * 500, [1], list(range(100, 140)), "x")
    vllm = Generation("p" * 500, [1], list(range(100, 137)), "x")
    pc = PromptComparison("p" * 500, hf, vllm, TokenParity(False, 37, "different lengths", None), [1e-3] * 37)
    out = text.comparison_text(Comparison("m", "cpu", "float32", prompts=[pc]))
    assert "p" * 200 not in out and "..." in out
    assert "[37]" in out and "[137]" in out and "[-]" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_teacher_forced_text_names_the_judged_path_the_floor_and_the_verdict():
    text = repr(fixtures.teacher_forced(ratio=0.9))
    assert "judged  prefill  lab (bfloat16)" in text and "floor   prefill  transformers (bfloat16)" in text
    assert "verdict: within noise (0.90x)" in text


def test_teacher_forced_text_shows_decode_steps_beside_prefill():
    text = repr(fixtures.teacher_forced(ratio=0.9, decode_ratio=4.0))
    assert "judged  decode   lab (bfloat16), decode steps" in text
    assert "floor   decode   transformers (bfloat16, KV-cache decode)" in text
    assert "judged parts: prefill: within noise (0.9x); decode: beyond noise (4x)" in text
    assert "verdict: beyond noise (decode) (4.00x)" in text
