"""A float32 LM head (vLLM's own `head_dtype` override): the lab holds float32 weights packed once, a
tied head gets its own float32 copy of the embedding, and the logits are float32 maths; vLLM's own
classes honour the same switch, and the replacement log records it."""

from __future__ import annotations

import warnings

import pytest
import torch

from hfvllm_lab import InputError, Session


def open_session(name: str, **kwargs) -> Session:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Session(name, dtype="bfloat16", **kwargs)


def logits_against_float32(model):
    """(logits dtype, max |logits - float32 maths| on bf16 hidden states, max against bf16 maths)."""
    head = model.hf.get_output_embeddings() if hasattr(model, "hf") else model.lm_head
    hidden = torch.randn(4, head.weight.shape[1], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    logits = model.compute_logits(hidden)
    vocab = logits.shape[-1]  # vLLM pads the head's rows; the logits are cut back to the vocabulary
    weight = head.weight[:vocab].float()
    exact = hidden.float() @ weight.t()
    rounded = (hidden @ head.weight[:vocab].to(torch.bfloat16).t()).float()
    scale = getattr(model, "logits_processor", None)
    factor = scale.scale if scale is not None else 1.0
    return logits.dtype, float((logits.float() - exact * factor).abs().max()), float((rounded - exact).abs().max())


@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_the_lab_keeps_a_float32_head(name):
    with open_session(name, lm_head_dtype="float32") as s:
        head = next(r for r in s.replacements.records if r.kind == "lm_head")
        assert s.replacements.options["LM head dtype"] == "float32 (hf_overrides head_dtype)"
        dtype, err, rounding = s.engine.apply_model(logits_against_float32)[0]
        assert dtype == torch.float32 and err < 1e-4 < rounding  # float32 maths, not bf16 rounding
        if name == "gemma":  # tied in the config: a float32 copy of the embedding, the log says so
            assert head.action == "replaced" and "untied here" in head.reason
            tied = s.engine.apply_model(lambda m: m.hf.get_output_embeddings().weight is
                                        m.hf.get_input_embeddings().weight)[0]
            assert tied is False
        assert "head_dtype=float32" in head.reason
        assert s.generate(["Hello"], 4)[0].token_ids


def test_without_the_option_the_head_is_the_models_dtype():
    with open_session("llama") as s:
        dtype, err, rounding = s.engine.apply_model(logits_against_float32)[0]
        assert dtype == torch.bfloat16 and "LM head dtype" not in s.replacements.options


def test_vllms_own_classes_honour_the_same_switch_and_bad_values_are_refused():
    with open_session("llama", backend="native", lm_head_dtype="float32") as s:
        assert s.engine.apply_model(lambda m: m.logits_processor.head_dtype)[0] == torch.float32
    with pytest.raises(InputError, match="lm_head_dtype"):
        open_session("llama", lm_head_dtype="float64")
