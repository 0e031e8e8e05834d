"""Verdicts on a real model in bfloat16: teacher-forced KL against transformers float32, judged
relative to the noise floor measured in the same run; defects injected through the engine."""

from __future__ import annotations

import json

import pytest

from hfvllm_lab.noise import NOISE_FACTOR

PROMPTS = ["The capital of France is", "Hello, my name is"]
MAX_TOKENS = 8
DEFECT_LAYER = 12


@pytest.fixture(scope="module")
def session(real_model_dir):
    from hfvllm_lab import Session

    with Session(real_model_dir) as s:  # dtype "auto": the checkpoint's bfloat16
        yield s


@pytest.fixture(scope="module")
def clean(session):
    return session.compare(PROMPTS, MAX_TOKENS)


def test_auto_dtype_follows_the_checkpoint(session):
    assert session.dtype == "bfloat16"
    assert "checkpoint" in session.dtype_reason and "bfloat16" in session.dtype_reason


def test_a_bf16_checkpoint_is_fused_and_rotated_by_the_kernel(session):
    """The sample checks run in float32 whatever dtype the engine builds in (they once failed on
    every bf16 checkpoint, which then ran unfused)."""
    from hfvllm_lab.vocab import ATTENTION, FUSED, ROTARY

    records = session.replacements.records
    layers = len([r for r in records if r.kind == ATTENTION])
    fused = [r for r in records if r.action == FUSED]
    assert layers == 30 and sorted({r.name.rsplit(".", 1)[-1] for r in fused}) == ["gate_up_proj", "qkv_proj"]
    assert len(fused) == 2 * layers
    assert not [r for r in records if "not fused" in r.reason]
    rotary = [r for r in records if r.kind == ROTARY]
    assert rotary and "_C.rotary_embedding" in rotary[0].reason and "stays HF" not in rotary[0].reason


def test_lab_in_bf16_is_within_noise_with_both_floors(clean):
    teacher = clean.teacher
    assert clean.verdict.status == "within noise", clean.verdict
    assert clean.ok and clean.verdict.ratio <= NOISE_FACTOR
    assert [f.path for f in teacher.floors] == ["transformers (bfloat16)", "vLLM native (bfloat16)"]
    # The floors are real measurements, not zeros: bf16 rounding moves the distributions.
    assert all(f.kl_mean > 1e-5 for f in teacher.floors)
    assert teacher.judged.positions == sum(len(s) - 1 for s in teacher.sequences)
    assert teacher.sequences[0][: teacher.prompt_lengths[0]] == clean.prompts[0].hf.prompt_token_ids
    assert clean.tokenization_agrees


def test_the_verdict_is_shown_everywhere(clean):
    text = repr(clean)
    assert "within noise" in text and "vLLM native (bfloat16)" in text and "KL mean" in text
    assert "within noise" in clean._repr_html_() and "hvl-teacher" in clean._repr_html_()
    data = json.loads(json.dumps(clean.to_dict(), default=str))
    assert data["verdict"]["status"] == "within noise" and len(data["teacher"]["floors"]) == 2
    frame = clean.to_frame()
    assert {"kl_mean", "kl_max", "prompt_ids_agree"} <= set(frame.columns)
    frame = clean.teacher.to_frame()
    assert frame["role"].tolist() == ["judged", "noise floor", "noise floor"] * 2
    assert frame["steps"].tolist() == ["prefill"] * 3 + ["decode"] * 3


def test_a_near_tie_is_explained_with_the_reference_margin(clean):
    for p in clean.prompts:
        if p.parity.first_divergence is not None:
            assert "reference top-2 margin" in p.parity.reason


def _set_input_norm_eps(model, eps):
    old = [layer.input_layernorm.variance_epsilon for layer in model.hf.model.layers]
    for layer in model.hf.model.layers:
        layer.input_layernorm.variance_epsilon = eps
    return old


def test_a_changed_norm_epsilon_is_beyond_noise(session):
    old = session.engine.apply_model(lambda m: _set_input_norm_eps(m, 1e-3))[0]
    try:
        # transformers' own floor alone here: vLLM native's is the same size (see the test above).
        broken = session.compare(PROMPTS, MAX_TOKENS, native_floor=False, profile=False)
    finally:
        session.engine.apply_model(lambda m: _set_input_norm_eps(m, old[0]))
    assert broken.verdict.status == "beyond noise", broken.verdict
    assert not broken.ok and broken.verdict.ratio > NOISE_FACTOR
    assert "native_floor=False" in " ".join(broken.teacher.notes)


def _scale_post_attention_norm(model, factor):
    model.hf.model.layers[DEFECT_LAYER].post_attention_layernorm.weight.data.mul_(factor)


def test_bisect_names_a_norm_scaled_by_five_percent(session):
    session.engine.apply_model(lambda m: _scale_post_attention_norm(m, 1.05))
    try:
        broken = session.bisect(PROMPTS[0])
    finally:
        session.engine.apply_model(lambda m: _scale_post_attention_norm(m, 1 / 1.05))
    assert broken.mode == "noise"
    assert broken.first_divergent == f"model.layers.{DEFECT_LAYER}.post_attention_layernorm", repr(broken)
    before = [r for r in broken.rows[: [r.module for r in broken.rows].index(broken.first_divergent)]]
    assert before and all(r.ok for r in before)


def test_the_clean_engine_bisects_within_noise(session):
    result = session.bisect(PROMPTS[0])
    assert result.mode == "noise" and result.first_divergent is None, repr(result)
    assert len(result.rows) > 100 and any(r.noise > 0 for r in result.rows)
