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
    assert additive.candidate  # shaped like an MLP: its Linears say why they were not fused

    class WithScale(Swapped):  # e.g. an MoE block: a router Linear beside experts holding parameters
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8))

    other = classify_mlp(WithScale())
    assert other.gate is None and not other.candidate and "outside its Linear children" in other.reason


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


@pytest.mark.parametrize("name", zoo.names())
def test_sample_checks_decide_the_same_in_a_bf16_build(name, monkeypatch):
    """Every zoo family: the fusion, norm and rotary decisions of a bf16 build (torch's default
    dtype bf16 while building, as under vLLM) equal those of a float32 build."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from hfvllm_lab.backend import fuse, norms, rope
    from hfvllm_lab.backend.attention import dispatches_through_interface
    from hfvllm_lab.backend.samples import looks_like_rotary

    config = AutoConfig.from_pretrained(zoo.path(name))

    def decide(dtype: torch.dtype) -> list:
        for module, cache in ((fuse, "_QKV_CACHE"), (fuse, "_MLP_CACHE"), (norms, "_CACHE"), (rope, "_CHECKED")):
            monkeypatch.setattr(module, cache, {})
        saved = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            rotaries = [m for m in model.modules() if looks_like_rotary(m)]
            attention = {n: m for n, m in model.named_modules() if dispatches_through_interface(type(m))}
            out: list = []
            for n, m in model.named_modules():
                if n in attention:
                    out.append((n, classify_qkv(m, rotaries[0] if rotaries else None)))
                elif len(fuse._plain_linears(m)) in (2, 3) and not any(True for _ in m.parameters(recurse=False)):
                    out.append((n, classify_mlp(m)))
                elif norms.looks_like_norm(m):
                    out.append((n, norms.classify_norm(m)))
            plan = rope.plan_rope(attention, rotaries, "cpu")
            out.append(("rotary", plan.engaged, plan.reason))
            assert torch.get_default_dtype() == dtype  # the checks give the build's default back
            return out
        finally:
            torch.set_default_dtype(saved)
            rope.forget_tables()

    in_bf16, in_fp32 = decide(torch.bfloat16), decide(torch.float32)
    assert in_bf16 == in_fp32  # before the fix: every check of the bf16 build "could not be run"
    assert not [d for d in in_bf16 if "could not be" in str(d)], name
    if name == "llama":
        assert in_bf16[-1][1], in_bf16[-1]  # the rotary kernel engages
        assert any(isinstance(d[1], fuse.QKVMaths) and d[1].roles for d in in_bf16)
