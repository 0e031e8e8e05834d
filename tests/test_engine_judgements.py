"""What users receive from vLLM, judged on the real SmolLM2 in bfloat16: decode steps in compare(), the
rollout mismatch RL trainers see, and diagnose() naming the factor — each with a defect injected where
users' defects live (decode steps only, batches only, long positions only, a logit scale in decode)."""

from __future__ import annotations

import json

import pytest

from hfvllm_lab.rules import LENS_CAUSE, LENS_EVERY_ARM, LENS_WITHIN, NOISE_FACTOR
from tests import defects

PROMPTS = ["The capital of France is", "Hello, my name is", "Water boils at"]
LAYER = "model.layers.10.mlp"


@pytest.fixture(scope="module")
def session(real_model_dir):
    from hfvllm_lab import Session

    with Session(real_model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def clean_rollout(session):
    return session.rollout(PROMPTS, n=2, max_tokens=16)


def test_a_clean_engine_is_within_noise_on_prefill_and_decode(session):
    cmp = session.compare(PROMPTS, 12, profile=False)
    teacher = cmp.teacher
    assert cmp.verdict.status == "within noise", cmp.verdict
    assert teacher.prefill_verdict.status == teacher.decode_verdict.status == "within noise"
    # the decode part scores the engine's own decode steps, row 0 (the prefill's) left out
    assert teacher.decode_judged.positions == sum(len(q) - n - 1 for q, n in
                                                  zip(teacher.decode_sequences, teacher.decode_prompt_lengths))
    assert [f.path for f in teacher.decode_floors] == ["transformers (bfloat16, KV-cache decode)",
                                                       "vLLM native (bfloat16, decode steps)"]
    assert all(f.kl_mean > 1e-5 for f in teacher.decode_floors)
    assert "judged parts: prefill: within noise" in repr(cmp) and "decode steps" in cmp._repr_html_()
    frame = teacher.to_frame()
    assert set(frame["steps"]) == {"prefill", "decode"}


def test_a_defect_active_only_in_decode_steps_is_beyond_noise_in_decode(session):
    """The issue's measurement: layer 10's MLP x1.15 in decode steps was 'within noise' when only
    teacher-forced prefills were judged."""
    session.engine.apply_model(defects.decode_only(LAYER, 1.15))
    try:
        cmp = session.compare(PROMPTS, 12, profile=False, native_floor=False)
        diagnosis = session.diagnose(PROMPTS, lenses=["decode", "batch"], n=1, max_tokens=12,
                                     progress=lambda *a: None)
    finally:
        session.engine.apply_model(defects.undo(LAYER))
    assert cmp.verdict.status == "beyond noise" and cmp.verdict.part == "decode", cmp.verdict
    assert cmp.teacher.prefill_verdict.status == "within noise"
    assert cmp.teacher.decode_verdict.ratio > NOISE_FACTOR
    assert diagnosis.beyond == ["decode"], repr(diagnosis)
    decode = diagnosis.lens("decode")
    assert decode.arms[0].name == "prefill" and decode.arms[0].ok and not decode.arms[1].ok
    assert diagnosis.lens("batch").status == LENS_EVERY_ARM  # every batch arm decodes: not the batch


def test_a_defect_active_only_in_batches_names_the_batch_lens(session):
    session.engine.apply_model(defects.several_sequences_only(LAYER, 1.15))
    try:
        diagnosis = session.diagnose(PROMPTS, lenses=["decode", "batch"], n=1, max_tokens=12,
                                     progress=lambda *a: None)
    finally:
        session.engine.apply_model(defects.undo(LAYER))
    assert diagnosis.beyond == ["batch"], repr(diagnosis)
    batch = diagnosis.lens("batch")
    assert [a.name for a in batch.arms] == ["alone", "batch", "batch, reversed order"]
    assert batch.arms[0].ok and not batch.arms[1].ok
    assert diagnosis.lens("decode").status == LENS_WITHIN


def test_a_defect_at_long_positions_names_the_long_context_lens(session):
    assert session.settings.max_model_len >= 2048, session.max_model_len_reason  # follows the model now
    session.engine.apply_model(defects.positions_from(1024, 1.1))
    try:
        diagnosis = session.diagnose(PROMPTS, lenses=["long context"], n=1, max_tokens=8,
                                     progress=lambda *a: None)
    finally:
        session.engine.apply_model(defects.undo())
    lens = diagnosis.lens("long context")
    assert lens.status == LENS_CAUSE, repr(diagnosis)
    by_name = {a.name: a for a in lens.arms}
    assert by_name["positions 0-255"].ok and by_name["positions 512-1023"].ok
    assert not by_name["positions 1024-2047"].ok
    assert lens.arms[-1].name.startswith("decode at ") and not lens.arms[-1].ok


def test_a_clean_rollout_is_within_its_floor(clean_rollout):
    r = clean_rollout
    assert r.verdict.status == "within noise", r.verdict
    assert r.trainer_dtype == "bfloat16" and r.settings["logprobs_mode"] == "raw_logprobs"
    assert [f.path for f in r.floors] == ["transformers (bfloat16, KV-cache decode)",
                                          "transformers (bfloat16, KV-cache decode)",
                                          "vLLM native (bfloat16, decode steps)"]
    assert r.floors[1].against == "transformers (float32, teacher-forced)"
    assert len(r.samples) == 6 and all(len(s.token_ids) == len(s.rollout_logprobs) == len(s.trainer_logprobs)
                                       for s in r.samples)
    assert r.judged.tokens == sum(len(s.token_ids) for s in r.samples)
    assert 0 < r.judged.seq_ess <= 1 and r.judged.k3_kl > 0 and r.top_tokens
    data = json.loads(json.dumps(r.to_dict(), default=str))
    assert data["verdict"]["status"] == "within noise"
    assert "Most divergent tokens" in repr(r) and "hvl-rollout-metrics" in r._repr_html_()
    assert len(r.to_frame()) == r.judged.tokens


def test_a_logit_scale_in_decode_is_beyond_the_rollout_floor_with_greedy_tokens_unchanged(session, clean_rollout):
    """A temperature the engine applies in decode steps only: greedy tokens cannot show it (argmax is
    scale-invariant), the sampled tokens' logprobs an RL trainer consumes do."""
    greedy = [g.token_ids for g in session.generate(PROMPTS, 12)]
    session.engine.apply_model(defects.logit_scale_in_decode(1.1))
    try:
        assert [g.token_ids for g in session.generate(PROMPTS, 12)] == greedy
        broken = session.rollout(PROMPTS, n=2, max_tokens=16, native_floor=False)
    finally:
        session.engine.apply_model(defects.undo())
    assert broken.verdict.status == "beyond noise", broken.verdict
    assert broken.judged.k3_kl > NOISE_FACTOR * clean_rollout.judged.k3_kl
