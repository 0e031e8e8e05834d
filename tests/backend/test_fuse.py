"""Fusions (q/k/v -> QKVParallelLinear, gate/up -> MergedColumnParallelLinear + fused activation),
decided from what the modules compute on a sample input, and checked against the unfused build."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfvllm_lab import zoo
from hfvllm_lab.backend.fuse import classify_mlp, classify_qkv
from hfvllm_lab.backend.records import FUSED, LINEAR
from tests.conftest import engine_settings


def meta_layer(name: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(zoo.path(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model


# -- decided from the maths, not from names -------------------------------------------------------
def test_mlps_are_classified_by_what_they_compute():
    llama = classify_mlp(meta_layer("llama").model.layers[0].mlp)
    assert (llama.gate, llama.up, llama.down, llama.activation) == ("gate_proj", "up_proj", "down_proj", "silu")
    gemma = classify_mlp(meta_layer("gemma").model.layers[0].mlp)
    assert gemma.activation == "gelu_tanh"
    phi3 = classify_mlp(meta_layer("phi3").model.layers[0].mlp)  # gate and up stacked in one Linear
    assert (phi3.gate, phi3.up, phi3.down) == ("gate_up_proj", None, "down_proj")


class Swapped(nn.Module):
    """Names lie: `up_proj` is the one that goes through the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16, False), nn.Linear(8, 16, False), nn.Linear(16, 8, False)

    def forward(self, x):
        return self.down_proj(self.gate_proj(x) * torch.nn.functional.silu(self.up_proj(x)))


class Additive(Swapped):
    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) + self.up_proj(x))


def test_mlp_roles_come_from_the_maths_and_other_maths_is_not_fused():
    swapped = classify_mlp(Swapped())
    assert (swapped.gate, swapped.up) == ("up_proj", "gate_proj")
    additive = classify_mlp(Additive())
    assert additive.gate is None and "down(act(gate(x)) * up(x))" in additive.reason


def test_qkv_roles_and_shared_input_are_measured():
    from transformers.models.llama.modeling_llama import LlamaAttention

    attn = meta_layer("qwen3").model.layers[0].self_attn  # q_norm/k_norm between projection and attention
    maths = classify_qkv(attn, None)
    assert maths.roles == {"q_proj": "q", "k_proj": "k", "v_proj": "v"}
    assert (maths.num_heads, maths.num_kv_heads, maths.head_size) == (4, 2, 32)

    class KeyFromACopy(LlamaAttention):
        def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
            shape = (*hidden_states.shape[:-1], -1, self.head_dim)
            q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
            k = self.k_proj(hidden_states.clone()).view(shape).transpose(1, 2)  # another tensor
            v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, None)
            return fn(self, q, k, v, attention_mask, scaling=self.scaling)

    class ValueFromQProj(KeyFromACopy):
        def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
            shape = (*hidden_states.shape[:-1], -1, self.head_dim)
            v = self.q_proj(hidden_states).view(shape).transpose(1, 2)
            k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
            q = self.v_proj(hidden_states).view(shape).transpose(1, 2)
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, None)
            return fn(self, q, k, v, attention_mask, scaling=self.scaling)

    config = meta_layer("llama").config
    refused = classify_qkv(KeyFromACopy(config, 0), None)
    assert refused.roles is None and "same input tensor" in refused.reason
    swapped = classify_qkv(ValueFromQProj(config, 0), None)
    assert swapped.roles == {"q_proj": "v", "k_proj": "k", "v_proj": "q"}


def test_a_bf16_build_is_checked_in_float32(monkeypatch):
    """vLLM builds a bf16 checkpoint with bf16 as torch's default dtype; the sample checks run on
    float32 copies and must not pick up that default (they did, and a bf16 SmolLM2 ran unfused)."""
    from hfvllm_lab.backend import fuse, norms, rope
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.setattr(fuse, "_QKV_CACHE", {})
    monkeypatch.setattr(fuse, "_MLP_CACHE", {})
    monkeypatch.setattr(norms, "_CACHE", {})
    monkeypatch.setattr(rope, "_CHECKED", {})
    config = AutoConfig.from_pretrained(zoo.path("llama"))
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as vLLM's model loader does while it builds
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        rotary = type(model.model.rotary_emb)(config)  # its buffers are real by the time of the checks
        layer = model.model.layers[0]
        qkv = classify_qkv(layer.self_attn, rotary)
        mlp = classify_mlp(layer.mlp)
        norm = norms.classify_norm(layer.input_layernorm)
        rotation = rope.plan_rope({"a": layer.self_attn}, [rotary], "cpu")
        assert torch.get_default_dtype() == torch.bfloat16  # given back as found
    finally:
        torch.set_default_dtype(saved)
        rope.forget_tables()
    assert qkv.roles == {"q_proj": "q", "k_proj": "k", "v_proj": "v"}, qkv.reason
    assert mlp.gate == "gate_proj" and mlp.activation == "silu", mlp.reason
    assert norm.convention is not None, norm.reason
    assert rotation.engaged, rotation.reason


# -- in the engine: fused vs unfused --------------------------------------------------------------
def _run(name: str, fuse: bool, prompts):
    from hfvllm_lab.backend import ARCH
    from hfvllm_lab.paths.vllm_path import VllmPath

    overrides = {"architectures": [ARCH], "lab_fuse": fuse}
    with VllmPath(engine_settings(zoo.path(name), extra={"hf_overrides": overrides})) as path:
        report = path.rpc("lab_build_report")
        tree = path.rpc("lab_module_tree")
        out = path.generate(prompts, 8)
    return report, tree, out


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_fused_build_matches_the_unfused_one_and_records_what_merged(name, prompts):
    fused_report, tree, fused = _run(name, True, prompts)
    plain_report, _, plain = _run(name, False, prompts)
    for a, b in zip(fused, plain):
        assert a.token_ids == b.token_ids
        diffs = [abs(x - y) for x, y in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:])]
        assert max(diffs) < 1e-4, diffs
    assert not any(r.action == FUSED for r in plain_report.records)
    fused_records = {r.name: r for r in fused_report.records if r.action == FUSED}
    layers = len(fused_report.attention)
    if name == "llama":
        qkv = fused_records["model.layers.0.self_attn.qkv_proj"]
        assert qkv.kind == LINEAR and qkv.new_class == "QKVParallelLinear"
        assert qkv.fused_from == tuple(f"model.layers.0.self_attn.{p}_proj" for p in "qkv")
        assert len(fused_records) == 2 * layers
        nodes = {n.name: n for n in tree}
        assert nodes["model.layers.0.self_attn.k_proj"].status == FUSED
        assert "qkv_proj" in nodes["model.layers.0.self_attn.k_proj"].reason
    else:  # Phi-3: q/k/v already one Linear in the checkpoint; gate_up_proj loads whole
        assert set(fused_records) == {f"model.layers.{i}.mlp.gate_up_proj" for i in range(layers)}
        assert fused_records["model.layers.0.mlp.gate_up_proj"].fused_from == ("model.layers.0.mlp.gate_up_proj",)
    gate_up = next(r for r in fused_records.values() if r.new_class == "MergedColumnParallelLinear")
    assert "SiluAndMul" in gate_up.reason
