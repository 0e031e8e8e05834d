"""Sequential residency rebuilds the engine between compare()'s halves: edits made through the Session
are applied to the rebuilt engine, edits it cannot repeat are refused or said to be lost."""

from __future__ import annotations

import warnings

import pytest

from hfvllm_lab import Session
from hfvllm_lab.compare import rebuild_note
from hfvllm_lab.errors import ProbeUnavailableError

PROMPTS = ["Hello world", "The capital of France is"]


def scale_final_norm(model, factor: float = 1.3) -> None:
    """A defect as a forward wrapper (weights of CPU linears are prepacked; norm outputs are not)."""
    norm = model.hf.model.norm
    forward = norm.forward
    norm.forward = lambda x, *a, **k: forward(x, *a, **k) * factor


@pytest.fixture()
def session():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = Session("llama")
    yield s
    s.close()


def test_an_edit_made_through_the_session_survives_the_rebuild(session):
    session.apply_model(scale_final_norm)
    cmp = session.compare(PROMPTS, 4, residency="sequential", native_floor=False, profile=False)
    assert cmp.residency.startswith("sequential (requested)")
    assert "1 edit(s) made through Session.apply_model were applied to the rebuilt engine" in cmp.residency
    # The teacher-forced half runs after the rebuild: it still sees the defect.
    assert cmp.teacher.verdict.status == "fail" and cmp.teacher.judged.max_target_logprob_diff > 1e-2
    assert not cmp.ok


def test_an_edit_the_rebuild_cannot_repeat_is_refused_or_said_lost(session):
    session.engine.apply_model(scale_final_norm)
    with pytest.raises(ProbeUnavailableError, match="Session.apply_model"):
        rebuild_note(session, requested=False)  # what an automatic rebuild does with such an edit
    cmp = session.compare(PROMPTS, 4, residency="sequential", native_floor=False, profile=False)
    assert "EDITS LOST: 1 engine.apply_model call(s)" in cmp.residency
    # The prefill half ran on the rebuilt, clean engine; the decode steps before the rebuild saw the edit.
    assert cmp.teacher.prefill_verdict.status == "pass" and cmp.teacher.decode_verdict.status == "fail"
    assert "EDITS LOST" in repr(cmp)
