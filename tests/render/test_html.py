"""HTML fragments: structure, status classes, highlighting and escaping."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser

from hfvllm_lab.render import html
from hfvllm_lab.results.replacements import STATUSES
from . import fixtures

EVIL = "<script>alert('x')</script>"
VOID = {"meta", "img", "br", "hr", "input", "link"}


class Collector(HTMLParser):
    """Records tags with their classes and text, and checks that tags are balanced."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.elements: list[tuple[str, set[str], dict]] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, set((attrs.get("class") or "").split()), attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def with_class(self, css: str) -> list[tuple[str, set[str], dict]]:
        return [e for e in self.elements if css in e[1]]


def parse(fragment: str) -> Collector:
    c = Collector()
    c.feed(fragment)
    c.close()
    assert not c.errors, c.errors
    assert not c.stack, f"unclosed {c.stack}"
    assert not any(tag == "script" for tag, _, _ in c.elements)
    return c


def test_every_fragment_is_balanced_html():
    for fragment in (html.replacement_log_html(fixtures.replacement_log()), html.memory_html(fixtures.memory_report()),
                     html.attention_html(fixtures.attention_report()), html.timing_html(fixtures.layer_timing()),
                     html.comparison_html(fixtures.comparison()), html.bisect_html(fixtures.bisect_result())):
        parse(fragment)


def test_replacement_tree_colours_every_status():
    c = parse(html.replacement_log_html(fixtures.replacement_log()))
    tree = c.with_class("hvl-tree")
    assert tree and tree[0][0] == "details"
    for status in STATUSES:
        badges = c.with_class(f"hvl-{status}")
        # one in the legend, at least one in the tree
        assert len(badges) >= 2, status
        assert "color:" in badges[0][2]["style"]
    styles = {status: c.with_class(f"hvl-{status}")[0][2]["style"] for status in STATUSES}
    assert len(set(styles.values())) == len(STATUSES)  # a distinct colour each
    assert c.with_class("hvl-counts")
    assert c.with_class("hvl-not-fused")  # why a projection group stayed unfused, grouped by reason
    # containers with children are collapsible
    assert len([e for e in c.elements if e[0] == "details" and "hvl-node" in e[1]]) == 5


def test_comparison_highlights_the_first_divergent_step():
    cmp = fixtures.comparison()
    c = parse(html.comparison_html(cmp))
    tables = c.with_class("hvl-steps")
    assert len(tables) == 2
    # step, HF, vLLM and logprob-diff rows each highlight one cell, only for the diverging prompt
    highlighted = c.with_class("hvl-diverge")
    steps_cells = [e for e in highlighted if e[0] == "td"]
    assert len(steps_cells) == 4
    frag = html.comparison_html(cmp)
    assert 'class="hvl-diverge"' in frag and ">28</td>" in frag and ">30</td>" in frag
    for row in ("hvl-row-step", "hvl-row-hf", "hvl-row-vllm", "hvl-row-diff"):
        assert len(c.with_class(row)) == 2
    assert c.with_class("hvl-figures") and c.with_class("hvl-residency") and c.with_class("hvl-bisect")
    assert c.with_class("hvl-ok") and c.with_class("hvl-fail")
    # the bisect's first divergent row is highlighted too
    assert any(e[0] == "tr" for e in highlighted)


def test_user_strings_are_escaped():
    log = fixtures.replacement_log(model=EVIL, reason=EVIL)
    cmp = dataclasses.replace(fixtures.comparison(prompt=EVIL), model=EVIL, residency=EVIL)
    mem = dataclasses.replace(fixtures.memory_report(), model=EVIL, note=EVIL)
    att = dataclasses.replace(fixtures.attention_report(), reason=EVIL)
    timing = dataclasses.replace(fixtures.layer_timing(), timer=EVIL)
    for fragment in (html.replacement_log_html(log), html.comparison_html(cmp), html.memory_html(mem),
                     html.attention_html(att), html.timing_html(timing), html.bisect_html(cmp.bisect),
                     html.report_html(EVIL, [(EVIL, "<p>ok</p>")])):
        assert "<script>" not in fragment
        assert "&lt;script&gt;" in fragment
        c = parse(fragment)
        assert any("<script>" in t for t in c.text)  # shown to the reader as text


def test_report_html_is_a_standalone_document():
    doc = html.report_html("Lab report", [("Memory", html.memory_html(fixtures.memory_report())),
                                          ("Attention", html.attention_html(fixtures.attention_report()))])
    assert doc.startswith("<!DOCTYPE html>")
    c = parse(doc)
    assert [e[0] for e in c.elements[:3]] == ["html", "head", "meta"]
    assert len(c.with_class("hvl-section")) == 2
    assert "<link" not in doc and "<script" not in doc


def test_repr_html_goes_through_the_html_renderers():
    log, cmp = fixtures.replacement_log(), fixtures.comparison()
    assert log._repr_html_() == html.replacement_log_html(log)
    assert cmp._repr_html_() == html.comparison_html(cmp)
    assert cmp.bisect._repr_html_() == html.bisect_html(cmp.bisect)
    assert fixtures.memory_report()._repr_html_() == html.memory_html(fixtures.memory_report())
    assert fixtures.attention_report()._repr_html_() == html.attention_html(fixtures.attention_report())
    assert fixtures.layer_timing()._repr_html_() == html.timing_html(fixtures.layer_timing())


def test_session_card_reads_plain_attributes_only():
    class FakeSession:
        model_name, device, dtype, backend, attention_path, hf_attention, closed = (
            EVIL, "cpu", "bfloat16", "lab", "vllm", "sdpa", False)

        @property
        def replacements(self):  # would call the engine
            raise AssertionError("session_html must not touch the engine")

    frag = html.session_html(FakeSession())
    c = parse(frag)
    assert "&lt;script&gt;" in frag and c.with_class("hvl-ok") and "bfloat16" in frag


def test_generation_html_lists_steps_and_escapes_the_prompt():
    from hfvllm_lab.results.generation import Generation

    gen = Generation("<script>x</script>", [256, 1], [5, 6], "ab", [{5: -0.25}, {6: -1.5}], [None, -2.0])
    html = gen._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "hvl-generation" in html and html.count("<tr") == 3  # header + two steps
    frame = gen.to_frame()
    assert list(frame["token"]) == [5, 6] and list(frame["logprob"]) == [-0.25, -1.5]


def test_rank_report_puts_the_ranks_side_by_side():
    report = fixtures.rank_report()
    c = parse(report._repr_html_())
    assert len(c.with_class("hvl-rank")) == 4 and c.with_class("hvl-rank-columns") and c.with_class("hvl-ranks")
    assert all(row.label in report._repr_html_() for row in report.rows)
    frame = report.to_frame()
    assert list(frame["rank"]) == [0, 1, 2, 3] and list(frame["layers"]) == ["0-1", "0-1", "2-3", "2-3"]
    # shards of all four ranks plus each stage's whole-held bytes once
    assert report.model_param_bytes() == sum(r.param_bytes - r.replicated_bytes for r in report.rows) + 1024 + 1280
    assert report.to_dict()["rows"][3]["label"] == "rank 3 (tp 1/2, pp 1/2)"
