"""Session.rollout() on the zoo's llama in float32, where a correct engine and trainer agree to ~1e-6:
vLLM's processed logprobs are matched by the trainer's transform, seeds reproduce samples, a defect in
the sampled distribution fails the strict rule, and the result shows itself."""

from __future__ import annotations

import warnings

import pytest

from hfvllm_lab.mismatch import mismatch_metrics
from tests import defects

PROMPTS = ["Hello world", "The quick brown fox"]


@pytest.fixture(scope="module")
def session():
    from hfvllm_lab import Session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = Session("llama")
    with s:
        yield s


def test_raw_rollout_agrees_with_a_float32_trainer(session):
    r = session.rollout(PROMPTS, n=3, max_tokens=12, seed=7, native_floor=False)
    assert r.verdict.status == "pass", r.verdict
    assert r.judged.max_abs_log_ratio < 1e-3
    assert r.judged.tokens == sum(len(s.token_ids) for s in r.samples) <= 6 * 12  # a sample may stop at EOS
    assert [s.seed for s in r.samples] == [7, 8, 9, 10, 11, 12]
    assert r.settings["seeding"].startswith("per request")
    again = session.rollout(PROMPTS, n=3, max_tokens=12, seed=7, native_floor=False)
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in r.samples]  # seeds reproduce


def test_processed_logprobs_are_matched_by_the_trainers_transform(session):
    """Temperature 0.7, top-k 20, top-p 0.9: vLLM's processed logprobs; the trainer's distribution
    transformed the same way agrees, the raw one does not."""
    r = session.rollout(PROMPTS, n=2, max_tokens=12, temperature=0.7, top_k=20, top_p=0.9,
                        logprobs_mode="processed", native_floor=False)
    assert r.settings["logprobs_mode"] == "processed_logprobs"
    assert r.verdict.status == "pass", r.verdict
    raw = session.rollout(PROMPTS, n=2, max_tokens=12, temperature=0.7, top_k=20, top_p=0.9, native_floor=False)
    # raw mode: the engine returns the model's own logprobs; the trainer (raw too) agrees as well
    assert raw.verdict.status == "pass"
    processed_vs_raw = mismatch_metrics("processed", "raw", [s.rollout_logprobs for s in r.samples],
                                        [s.trainer_logprobs for s in raw.samples])
    assert processed_vs_raw.max_abs_log_ratio > 0.05  # the two modes really differ


def test_a_defect_in_decode_fails_the_strict_rule_and_names_tokens(session):
    session.engine.apply_model(defects.logit_scale_in_decode(1.2))
    try:
        r = session.rollout(PROMPTS, n=2, max_tokens=12, native_floor=False)
    finally:
        session.engine.apply_model(defects.undo())
    assert r.verdict.status == "fail" and r.judged.max_abs_log_ratio > 1e-2
    assert r.top_tokens and abs(r.top_tokens[0].log_ratio) == pytest.approx(r.judged.max_abs_log_ratio, rel=1e-6)
    assert all(t.position > 0 for t in r.top_tokens[:3])  # decode steps only: the first token came from prefill


def test_rollout_plots_and_refusals(session):
    from hfvllm_lab import InputError

    r = session.rollout(PROMPTS[:1], n=2, max_tokens=6, native_floor=False)
    ratio, position = r.plot("ratio"), r.plot("position")
    assert ratio.axes[0].get_xscale() == "log" and len(ratio.axes[0].lines) == 4  # the two bands' edges
    assert len(position.axes[0].lines) == 1 + len(r.floors)
    with pytest.raises(ValueError, match="kind"):
        r.plot("nope")
    with pytest.raises(InputError, match="logprobs_mode"):
        session.rollout(PROMPTS, logprobs_mode="final")
    with pytest.raises(InputError, match="top_p"):
        session.rollout(PROMPTS, top_p=0)
