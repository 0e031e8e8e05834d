"""Eager CPU steps rotate q/k with vLLM's kernel only where a sample shows the same q/k/v."""

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import CohereConfig, LlamaConfig
from transformers.models.cohere import modeling_cohere
from transformers.models.llama import modeling_llama

from hfvllm_lab.backend import rope
from hfvllm_lab.backend.rope import forget_tables, plan_rope


def _llama():
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=96, num_hidden_layers=1, vocab_size=32)
    config._attn_implementation = "sdpa"
    return config, modeling_llama.LlamaAttention(config, 0), modeling_llama.LlamaRotaryEmbedding(config)


def _kernel_calls(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, sum(e.count for e in prof.key_averages() if e.key == "_C::rotary_embedding")


def test_llama_rotation_runs_the_kernel_for_its_own_tables_only():
    config, attention, rotary = _llama()
    plan = plan_rope({"model.layers.0.self_attn": attention}, [rotary], "cpu")
    assert plan.engaged, plan.reason
    assert "_C.rotary_embedding" in plan.reason and "modeling_llama.apply_rotary_pos_emb" in plan.reason
    apply = modeling_llama.apply_rotary_pos_emb
    original = apply.lab_original
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 64, generator=gen)
    qkv = torch.randn(1, 6, (4 + 2 + 2) * 16, generator=gen)  # q/k as slices of one fused output
    positions = torch.tensor([[0, 5, 6, 7, 30, 31]])
    try:
        cos, sin = rotary(x, positions)  # the hook remembers these tables
        q = qkv[..., :64].view(1, 6, 4, 16).transpose(1, 2)
        k = qkv[..., 64:96].view(1, 6, 2, 16).transpose(1, 2)
        want_q, want_k = original(q.clone(), k.clone(), cos, sin)
        (got_q, got_k), calls = _kernel_calls(lambda: apply(q, k, cos, sin))
        assert calls == 1
        assert torch.allclose(got_q, want_q, atol=1e-5) and torch.allclose(got_k, want_k, atol=1e-5)
        # tables the lab's rotary module did not make (the HF-native path): transformers' own ops
        q2 = qkv[..., :64].view(1, 6, 4, 16).transpose(1, 2).clone()
        (_, _), calls = _kernel_calls(lambda: apply(q2, k.clone(), cos.clone(), sin.clone()))
        assert calls == 0
    finally:
        forget_tables()


def test_whole_attention_forward_matches_with_the_kernel():
    config, attention, rotary = _llama()
    assert plan_rope({"a": attention}, [rotary], "cpu").engaged
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in attention.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    x = torch.randn(1, 5, 64, generator=gen)
    positions = torch.tensor([[2, 3, 4, 9, 10]])
    try:
        with torch.no_grad():
            cos, sin = rotary(x, positions)
            (lab, _), calls = _kernel_calls(lambda: attention(x, (cos, sin), None))
            want, _ = attention(x, (cos.clone(), sin.clone()), None)
        assert calls == 1
        assert torch.allclose(lab, want, atol=1e-5), (lab - want).abs().max()
    finally:
        forget_tables()


def test_interleaved_rotation_stays_hf_with_the_reason():
    # a live lab model in this process has served kernel calls from its own tables: the check of
    # another model must neither count them nor drop them
    _, llama_attention, llama_rotary = _llama()
    assert plan_rope({"a": llama_attention}, [llama_rotary], "cpu").engaged
    cos, sin = llama_rotary(torch.randn(1, 3, 64), torch.tensor([[4, 5, 6]]))
    q, k = torch.randn(1, 3, 4, 16).transpose(1, 2), torch.randn(1, 3, 2, 16).transpose(1, 2)
    modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    live = rope._STEPS[id(cos)]
    assert live.calls == 1
    config = CohereConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=96,
                          num_hidden_layers=1, vocab_size=32)
    config._attn_implementation = "sdpa"
    attention = modeling_cohere.CohereAttention(config, 0)
    plan = plan_rope({"a": attention}, [modeling_cohere.CohereRotaryEmbedding(config)], "cpu")
    assert not plan.engaged and "changes the attention module's output" in plan.reason, plan.reason
    assert not hasattr(modeling_cohere.apply_rotary_pos_emb, "lab_original")  # left as transformers has it
    assert rope._STEPS.get(id(cos)) is live
    forget_tables()


def test_devices_without_the_kernel_keep_hf_rotation():
    config, attention, rotary = _llama()
    plan = plan_rope({"a": attention}, [rotary], "cuda")
    assert not plan.engaged and "no _C.rotary_embedding kernel for cuda" in plan.reason
    assert not plan_rope({"a": attention}, [], "cpu").engaged
