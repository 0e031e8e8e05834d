"""HF attention inside the vLLM path: allowed for single-prompt scoring, refused elsewhere."""

from __future__ import annotations

import pytest

from hfvllm_lab.errors import AttentionPathError

PROMPTS = ["Hello world, this is longer than the window", "abc"]


@pytest.fixture(scope="module")
def sdpa_scores():
    from hfvllm_lab import Session

    with Session("mistral", attention="sdpa") as s:
        with pytest.raises(AttentionPathError, match="cannot separate the sequences of a batch"):
            s.generate(PROMPTS, max_tokens=4)
        with pytest.raises(AttentionPathError, match="needs vLLM's paged attention"):
            s.compare(PROMPTS)
        s.reset_attention_counts()
        scores = s.score(PROMPTS)
        report = s.attention
        # Force the refusal inside the model too: two sequences in one step.
        with pytest.raises(AttentionPathError, match="only scores one prompt"):
            s.engine.generate(PROMPTS, 1)
        after = s.score(PROMPTS[:1])  # still usable after the refusal
    return scores, report, after


@pytest.fixture(scope="module")
def paged_scores():
    from hfvllm_lab import Session

    with Session("mistral") as s:
        return s.score(PROMPTS)


def test_scores_match_paged_attention(sdpa_scores, paged_scores):
    scores, _, after = sdpa_scores
    for a, b in zip(scores, paged_scores):
        diffs = [abs(x - y) for x, y in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:])]
        assert max(diffs) < 1e-3
    assert after[0].prompt_logprobs == scores[0].prompt_logprobs


def test_attention_report_shows_what_ran(sdpa_scores):
    _, report, _ = sdpa_scores
    assert report.selected == "sdpa"
    assert report.forward_calls == 2  # one prefill per prompt
    assert all(r.implementation == "sdpa" and r.calls == 2 and r.fallbacks == 0 for r in report.rows)


def test_sdpa_is_refused_where_it_would_drop_softcapping():
    from hfvllm_lab import Session

    with pytest.raises(AttentionPathError, match="soft-capping"):
        Session("gemma2", attention="sdpa")
