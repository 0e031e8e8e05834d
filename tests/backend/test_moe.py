"""MoE experts on vLLM's fused MoE, checkpoints through transformers' conversion mapping."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from hfvllm_lab import zoo
from hfvllm_lab.backend.records import EXPERTS, KEPT, OTHER, REPLACED
from hfvllm_lab.parity import compare_generations
from tests.conftest import engine_settings

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def moe(prompts):
    from hfvllm_lab.paths.hf_path import HfPath
    from hfvllm_lab.paths.vllm_path import VllmPath

    model_dir = zoo.path("qwen2-moe")
    with VllmPath(engine_settings(model_dir)) as path:
        report = path.apply_model(lambda m: m.lab_report)[0]
        # vLLM's expert tensors against HF's own packed parameters, loaded by transformers.
        w13 = path.apply_model(lambda m: m.hf.model.layers[1].mlp.experts.runner.routed_experts.w13_weight.clone())[0]
        w2 = path.apply_model(lambda m: m.hf.model.layers[1].mlp.experts.runner.routed_experts.w2_weight.clone())[0]
        vllm_out = path.generate(prompts, MAX_TOKENS)
    hf = HfPath(model_dir)
    hf_out = hf.generate(prompts, MAX_TOKENS)
    experts = hf.model.model.layers[1].mlp.experts
    hf_w13, hf_w2 = experts.gate_up_proj.detach().clone(), experts.down_proj.detach().clone()
    hf.close()
    return dict(dir=model_dir, report=report, vllm=vllm_out, hf=hf_out, w13=w13, w2=w2, hf_w13=hf_w13, hf_w2=hf_w2)


def test_checkpoint_stores_experts_one_by_one():
    with safe_open(zoo.path("qwen2-moe") / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.mlp.experts.3.gate_proj.weight" in keys
    assert not any(k.endswith("experts.gate_up_proj") for k in keys)


def test_experts_are_fused_moe_with_the_hf_router(moe):
    report = moe["report"]
    experts = [r for r in report.records if r.kind == EXPERTS]
    assert len(experts) == 4 and all(r.action == REPLACED and r.new_class == "LabFusedExperts" for r in experts)
    assert "4 experts, top-2" in experts[0].reason and "Qwen2MoeTopKRouter" in experts[0].reason
    routers = [r for r in report.records if r.name.endswith("mlp.gate")]
    assert routers and all(r.kind == OTHER and r.action == KEPT and "router" in r.reason for r in routers)


def test_per_expert_checkpoint_is_packed_like_transformers(moe):
    """Each expert holds exactly the values transformers packed for it. (vLLM's CPU kernel
    re-blocks its weights after loading, so the layout itself is proven by the parity test.)"""
    assert moe["w13"].shape == moe["hf_w13"].shape == (4, 64, 64)
    for ours, theirs in ((moe["w13"], moe["hf_w13"]), (moe["w2"], moe["hf_w2"])):
        for e in range(4):
            assert (ours[e].flatten().sort().values == theirs[e].flatten().sort().values).all(), e


def test_moe_matches_transformers(moe):
    for v, h in zip(moe["vllm"], moe["hf"]):
        assert v.prompt_token_ids == h.prompt_token_ids and len(v.token_ids) == MAX_TOKENS
        verdict = compare_generations(h, v, top_k=5, max_gap=0.05)
        assert verdict.ok, verdict.reason
        assert verdict.max_prompt_logprob_diff < 1e-3


def test_gpt_neox_embed_out_is_renamed_by_transformers_mapping():
    from hfvllm_lab.backend.weights import CheckpointConversion

    with safe_open(zoo.path("gpt-neox") / "model.safetensors", "pt") as f:
        assert "embed_out.weight" in set(f.keys())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(zoo.path("gpt-neox")))
    state = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    conversion = CheckpointConversion(model, state)
    assert conversion.rename("embed_out.weight") == ("lm_head.weight", None)
    assert conversion.rename("gpt_neox.final_layer_norm.weight")[0] == "gpt_neox.final_layer_norm.weight"


def test_session_compare_passes_on_moe_and_its_log_shows_the_fused_experts():
    from hfvllm_lab import Session

    session = Session("qwen2-moe")
    try:
        cmp = session.compare(["Hello world", "The quick brown fox"], max_tokens=8, profile=False)
        log = session.replacements
    finally:
        session.close()
    assert cmp.ok and cmp.verdict.ok, [p.parity.reason for p in cmp.prompts]
    experts = [r for r in log.records if r.kind == EXPERTS]
    assert len(experts) == 4 and all(r.action == REPLACED and r.new_class == "LabFusedExperts" for r in experts)
    assert "LabFusedExperts" in str(log) and "4 experts, top-2" in log._repr_html_()
