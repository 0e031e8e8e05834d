"""A pipeline rank's cut of the HF model, on meta (no engine): placeholders, records, refusals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hfvllm_lab import zoo
from hfvllm_lab.backend.pipeline import (
    LabMissingEmbedding,
    LabMissingLayer,
    PipelineSlice,
    check_pipeline,
    cut_pipeline,
    stage_layers,
)
from hfvllm_lab.errors import UnsupportedModelError
from hfvllm_lab.vocab import ELSEWHERE, EMBEDDING, LAYER, LM_HEAD, OTHER


def meta_model(name: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(zoo.path(name))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@pytest.mark.parametrize("name", ["llama", "gpt-neox"])
def test_a_later_rank_holds_only_its_layers_and_the_head(name):
    hf = meta_model(name)
    base = getattr(hf, hf.base_model_prefix)
    stage = stage_layers(base, hf.config)
    records = cut_pipeline(hf, base, hf.base_model_prefix, stage, PipelineSlice(1, 2, 2, 4, 4), "lm_head"
                           if name == "llama" else "embed_out", 64, torch.float32)
    layers = base.get_submodule(stage.layers_name)
    assert [type(m).__name__ for m in layers][:2] == ["LabMissingLayer"] * 2 and sum(
        p.numel() for m in list(layers)[:2] for p in m.parameters()) == 0
    by_kind = {(r.kind, r.name.rsplit(".", 1)[-1]) for r in records}
    assert {(LAYER, "0"), (LAYER, "1")} <= by_kind and all(r.action == ELSEWHERE for r in records)
    embeddings = [m for m in base.modules() if isinstance(m, LabMissingEmbedding)]
    assert len(embeddings) == 1  # only the nn.Embedding; GPT-NeoX's emb_dropout hands its input on
    assert embeddings[0](torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 64)
    if name == "gpt-neox":
        assert isinstance(base.emb_dropout, LabMissingLayer)
        assert any(r.kind == OTHER and r.name.endswith("emb_dropout") for r in records)
    assert {r.kind for r in records} >= {EMBEDDING, LAYER} and LM_HEAD not in {r.kind for r in records}


def test_an_earlier_rank_gives_the_head_and_final_norm_away():
    hf = meta_model("llama")
    base = hf.model
    records = cut_pipeline(hf, base, "model", stage_layers(base, hf.config), PipelineSlice(0, 2, 0, 2, 4),
                           "lm_head", 64, torch.float32)
    assert isinstance(hf.lm_head, LabMissingLayer) and isinstance(base.norm, LabMissingLayer)
    assert isinstance(base.embed_tokens, nn.Embedding)
    head = next(r for r in records if r.kind == LM_HEAD)
    assert "pipeline rank 1 (last stage)" in head.reason and head.parameters == 260 * 64


def test_splits_the_backend_cannot_build_are_refused():
    plan = {"embed_tokens": (["input_ids"], ["inputs_embeds"]), "layers": (["hidden_states"], ["hidden_states"])}
    config = SimpleNamespace(model_type="toy", num_hidden_layers=4, base_model_pp_plan=plan)
    check_pipeline(config, 4)
    with pytest.raises(UnsupportedModelError, match="more ranks than toy's 4 decoder layers"):
        check_pipeline(config, 5)
    with pytest.raises(UnsupportedModelError, match="declares no pipeline plan"):
        check_pipeline(SimpleNamespace(model_type="toy", num_hidden_layers=4, base_model_pp_plan=None), 2)
    gemma4_like = SimpleNamespace(model_type="gemma4_text", num_hidden_layers=4, base_model_pp_plan=plan,
                                  hidden_size_per_layer_input=16)
    with pytest.raises(UnsupportedModelError, match="hidden_size_per_layer_input=16"):
        check_pipeline(gemma4_like, 2)
