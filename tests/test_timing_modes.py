"""Steps classified from the scheduler's view, per-layer timing as a Chrome trace, and the
compiled ("fast") mode."""

from __future__ import annotations

import json

import pytest
import torch

from hfvllm_lab.probes.timing import phase_of, positions_step_phase
from hfvllm_lab.results.timing import DECODE, MIXED, PREFILL, LayerTiming, chrome_trace
from tests.render import fixtures


def test_phase_comes_from_tokens_scheduled_and_already_computed():
    assert phase_of([1, 1], [3, 4]) == DECODE  # two decodes at adjacent positions 3 and 4
    assert phase_of([3, 4], [0, 0]) == PREFILL
    assert phase_of([1], [0]) == PREFILL  # a one-token prompt
    assert phase_of([1, 5], [7, 0]) == MIXED
    assert phase_of([4], [8]) == PREFILL  # a later chunk of a chunked prefill
    # What the positions alone make of those two decodes: one run 3, 4 -> "prefill".
    assert positions_step_phase((None, torch.tensor([3, 4])), {}) == PREFILL


@pytest.fixture(scope="module")
def session():
    from hfvllm_lab import Session

    with Session("llama") as s:
        yield s


def test_two_decodes_at_adjacent_positions_are_decode_steps(session):
    # The byte-level zoo tokenizer adds BOS: "ab" is 3 tokens, "abc" 4, so the first decode step
    # holds positions 3 and 4 - one run of consecutive positions.
    lengths = [len(g.prompt_token_ids) for g in session.generate(["ab", "abc"], 1)]
    assert lengths == [3, 4]
    timing = session.profile(["ab", "abc"], max_tokens=5, warmup=0)
    assert timing.steps == {PREFILL: 1, DECODE: 4}
    assert timing.mode == "inspect"
    trace_checks(timing.to_chrome_trace(), {"vllm"})


def trace_checks(trace: dict, paths: set[str]) -> None:
    """The structure chrome://tracing and Perfetto read: complete events in µs, one track per path,
    properly nested slices."""
    json.loads(json.dumps(trace))
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert {n.split(" ")[0] for n in names.values()} == paths and len(names) == len(paths)
    slices = [e for e in events if e["ph"] == "X"]
    assert slices and {e["pid"] for e in slices} == set(names)
    for e in slices:
        assert set(e) >= {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}
        assert isinstance(e["ts"], (int, float)) and e["dur"] >= 0 and e["tid"] == 1
    for pid in names:  # on one track, two slices either nest or do not overlap
        track = sorted((e for e in slices if e["pid"] == pid), key=lambda e: (e["ts"], -e["dur"]))
        for a in track:
            for b in track:
                a0, a1, b0, b1 = a["ts"], a["ts"] + a["dur"], b["ts"], b["ts"] + b["dur"]
                overlap = min(a1, b1) - max(a0, b0)
                eps = 0.01  # µs, rounding
                assert overlap <= eps or (a0 <= b0 + eps and b1 <= a1 + eps) or (b0 <= a0 + eps and a1 <= b1 + eps)
    steps = [e for e in slices if e["name"].endswith(" step")]
    assert {e["args"]["phase"] for e in steps} <= {PREFILL, DECODE, MIXED}


def test_chrome_trace_of_both_paths(tmp_path):
    hf, vllm = fixtures.layer_timing("hf", 2.0), fixtures.layer_timing("vllm")
    trace = chrome_trace([hf, vllm])
    trace_checks(trace, {"hf", "vllm"})
    layer0 = next(e for e in trace["traceEvents"] if e.get("name") == "model.layers.0" and e["pid"] == 2
                  and e["args"]["phase"] == DECODE)
    assert layer0["dur"] == pytest.approx(next(r.mean_seconds for r in vllm.rows
                                                if r.module == "model.layers.0" and r.phase == DECODE) * 1e6, abs=1e-3)
    path = vllm.save_chrome_trace(tmp_path / "trace.json")
    assert json.loads(open(path).read())["traceEvents"]
    empty = LayerTiming("vllm", "cpu", "perf_counter").to_chrome_trace()
    assert [e["ph"] for e in empty["traceEvents"]] == ["M", "M"]


def test_fast_mode_compiles_and_times_whole_steps(session):
    from hfvllm_lab import Session
    from hfvllm_lab.errors import ProbeUnavailableError

    eager = session.generate(["Hello world", "abc"], 6)
    session.close()
    with Session("llama", mode="fast") as fast:
        assert "mode='fast'" in repr(fast)
        assert fast.engine.apply_model(lambda m: m.lab_compiled) == [True]
        out = fast.generate(["Hello world", "abc"], 6)
        assert [g.token_ids for g in out] == [g.token_ids for g in eager]
        timing = fast.profile(["ab", "abc"], max_tokens=4, warmup=1)
        assert timing.mode == "fast" and timing.steps == {PREFILL: 1, DECODE: 3}
        assert {r.kind for r in timing.rows} == {"lm_head"}  # no per-layer hooks inside the graph
        with pytest.raises(ProbeUnavailableError, match="inspect"):
            fast.capture("Hello")
