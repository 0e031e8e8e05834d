"""diagnose() with every lens on the zoo's llama (float32): each lens runs its arms on real engines (the
Session's, and fresh ones in child processes for engine settings), the clean engine is within noise
everywhere, lenses the machine cannot run say why, and the result shows itself every way."""

from __future__ import annotations

import json
import warnings

import pytest

from hfvllm_lab.diagnose import LENSES
from hfvllm_lab.rules import LENS_STATUSES, LENS_UNAVAILABLE, LENS_WITHIN

PROMPTS = ["Hello world", "The quick brown fox"]


@pytest.fixture(scope="module")
def diagnosis():
    from hfvllm_lab import Session

    steps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = Session("llama")
    with s:
        result = s.diagnose(PROMPTS, n=1, max_tokens=8, progress=lambda done, total, what: steps.append((done, what)))
    return result, steps


def test_every_lens_runs_and_a_clean_engine_is_within_noise(diagnosis):
    result, _ = diagnosis
    assert [lens.name for lens in result.lenses] == list(LENSES)
    assert result.beyond == [] and result.remedies == []
    for lens in result.lenses:
        assert lens.status in LENS_STATUSES and lens.reason, lens
        if lens.name == "lm head":  # float32 model: nothing to flip
            assert lens.status == LENS_UNAVAILABLE and "float32 already" in lens.reason
            continue
        assert lens.status == LENS_WITHIN, (lens.name, lens.reason, [a.notes for a in lens.arms])
        assert len(lens.arms) >= 2 and all(a.verdict is not None and a.ok for a in lens.arms)


def test_the_arms_are_what_each_lens_says(diagnosis):
    result, _ = diagnosis
    assert [a.name for a in result.lens("decode").arms] == ["prefill", "decode steps"]
    assert [a.name for a in result.lens("batch").arms] == ["alone", "batch", "batch, reversed order"]
    cached = result.lens("prefix caching").arms[1]
    assert cached.name == "prefix cached" and "served from the cache" in cached.setting
    assert int(cached.setting.split(": ")[1].split(" of ")[0]) > 0  # the cache really served prompt tokens
    assert result.lens("chunked prefill").arms[1].name == "chunks of 64"
    assert "LabForCausalLM" in result.lens("chunked prefill").arms[1].setting  # a child engine, the lab's class
    long = result.lens("long context")
    assert long.arms[0].name == "positions 0-255" and long.arms[-1].name.startswith("decode at ")
    assert any("max_model_len" in n for n in long.notes)  # the zoo llama's context is 512 tokens
    assert [a.name for a in result.lens("dtype").arms] == ["float32", "bfloat16 engine"]
    assert result.lens("dtype").arms[1].verdict.status == "within noise"  # judged against bf16's own floor
    assert [a.name for a in result.lens("backend").arms] == ["lab", "transformers", "native"]
    assert result.lens("compiled").arms[1].name == "compiled"
    assert result.lens("tensor parallel").arms[1].name == "tensor parallel 2"
    assert all(a.tokens_per_second for a in result.lens("backend").arms)
    assert result.positions == sum(len(t) for t in [[0] * 7] * result.sequences)  # 8 tokens: 7 decode steps each


def test_progress_is_reported_per_lens(diagnosis):
    result, steps = diagnosis
    labels = [what for _, what in steps]
    assert labels[:2] == ["sampling on the engine", "transformers: truth and floors"]
    assert [f"lens: {name}" for name in LENSES] == labels[2:-1] and labels[-1] == "done"
    assert [done for done, _ in steps] == list(range(len(steps)))


def test_the_diagnosis_shows_itself(diagnosis):
    result, _ = diagnosis
    text = repr(result)
    assert "Diagnosis: llama" in text and "beyond noise: none" in text
    for name in LENSES:
        assert f"{name}: " in text
    html = result._repr_html_()
    assert "hvl-lenses" in html and html.count("hvl-lens\"") == len(LENSES)
    frame = result.to_frame()
    assert list(frame["lens"]) == list(LENSES) and {"base_kl_mean", "flip_ratio", "seconds"} <= set(frame.columns)
    data = json.loads(json.dumps(result.to_dict(), default=str))
    assert len(data["lenses"]) == len(LENSES) and data["beyond"] == []
    fig = result.plot()
    assert fig.axes and len(fig.axes[0].patches) == sum(len(l.arms) for l in result.lenses if l.status != LENS_UNAVAILABLE)


def test_unknown_lenses_and_too_few_tokens_are_refused():
    from hfvllm_lab import InputError, Session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = Session("llama")
    with s:
        with pytest.raises(InputError, match="unknown lens"):
            s.diagnose(lenses=["decode", "no such lens"])
        with pytest.raises(InputError, match="max_tokens >= 2"):
            s.diagnose(lenses=["decode"], max_tokens=1)


def test_an_arm_whose_engine_cannot_take_the_sessions_edits_does_not_run():
    """An edit written for the lab's modules has nothing to act on in vLLM's own classes: judging those
    arms would compare an edited engine with unedited ones, so they say why and do not run."""
    from hfvllm_lab import Session

    def scale_final_norm(model):
        norm = model.hf.model.norm
        forward = norm.forward
        norm.forward = lambda x, *a, **k: forward(x, *a, **k) * 1.0001

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = Session("llama")
    with s:
        s.apply_model(scale_final_norm)
        result = s.diagnose(PROMPTS[:1], lenses=["backend"], n=1, max_tokens=4, progress=lambda *a: None)
    lens = result.lens("backend")
    assert lens.status == LENS_UNAVAILABLE, lens
    assert [a.name for a in lens.arms] == ["lab", "transformers", "native"]
    for arm in lens.arms[1:]:
        assert arm.verdict is None and "edits do not apply" in arm.notes[0], arm.notes
