"""Per-layer attention read from each HF module: sinks (gpt_oss), per-layer windows (exaone4),
what the forward really passes (opt: scaling 1.0, the query pre-scaled), q/k/v biases fused into
one QKV layer (qwen2). Parity vs transformers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from hfvllm_lab.parity import compare_generations
from hfvllm_lab.zoo.specs import ZooSpec
from tests.conftest import engine_settings

MAX_TOKENS = 12
CASES = {
    "gpt_oss": dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=8, tie_word_embeddings=False),
    "exaone4": dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32, sliding_window=8,
                    sliding_window_pattern=2, tie_word_embeddings=False),
    "qwen2": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
    "opt": dict(num_attention_heads=2, ffn_dim=128, word_embed_proj_dim=64, head_dim=32, tie_word_embeddings=False),
}


@pytest.fixture(scope="module", params=list(CASES))
def run(request, prompts, tmp_path_factory):
    from hfvllm_lab.paths.hf_path import HfPath
    from hfvllm_lab.paths.vllm_path import VllmPath
    from hfvllm_lab.zoo.build import write_checkpoint

    model_type = request.param
    ckpt = tmp_path_factory.mktemp(model_type)
    write_checkpoint(ZooSpec(model_type, model_type, "", CASES[model_type], seed=11), ckpt)
    if model_type == "gpt_oss":  # sinks large enough to move the outputs
        tensors = load_file(ckpt / "model.safetensors")
        gen = torch.Generator().manual_seed(0)
        for key in [k for k in tensors if k.endswith("self_attn.sinks")]:
            tensors[key] = torch.randn(tensors[key].shape, generator=gen) * 2
        save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    if model_type == "qwen2":  # q/k/v biases a dropped or misplaced shard would show (zero at init)
        tensors = load_file(ckpt / "model.safetensors")
        gen = torch.Generator().manual_seed(0)
        for key in [k for k in tensors if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]:
            tensors[key] = torch.randn(tensors[key].shape, generator=gen) * 0.5
        save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with VllmPath(engine_settings(ckpt)) as path:
        report = path.apply_model(lambda m: m.lab_report)[0]
        sinks_bound = path.apply_model(lambda m: [
            mod.lab_attn.impl.sinks is mod.get_parameter(mod.lab_attn.lab_spec.sinks)
            for mod in m.hf.modules() if getattr(mod, "lab_attn", None) is not None and mod.lab_attn.lab_spec.sinks
        ])[0]
        qkv_biases = path.apply_model(lambda m: [
            float(mod.bias.abs().max()) for name, mod in m.named_modules()
            if name.endswith("qkv_proj") and getattr(mod, "bias", None) is not None])[0]
        vllm_out = path.generate(prompts, MAX_TOKENS)
    hf = HfPath(ckpt, attention="eager")  # gpt_oss has no sdpa path in transformers
    hf_out = hf.generate(prompts, MAX_TOKENS)
    hf.close()
    return dict(type=model_type, report=report, sinks_bound=sinks_bound, qkv_biases=qkv_biases, vllm=vllm_out,
                hf=hf_out)


def test_matches_transformers(run):
    for v, h in zip(run["vllm"], run["hf"]):
        verdict = compare_generations(h, v, top_k=5, max_gap=0.05)
        assert verdict.ok, f"{run['type']}: {verdict.reason}"
        assert verdict.max_prompt_logprob_diff < 1e-3, run["type"]


def test_specs_are_read_per_layer(run):
    specs = run["report"].attention
    if run["type"] == "gpt_oss":
        assert all(s.sinks == "sinks" for s in specs)
        assert run["sinks_bound"] == [True] * len(specs)
        assert [s.sliding_window for s in specs] == [8, None, 8, None]
    if run["type"] == "exaone4":
        # The module holds sliding_window 8 on every layer; its forward passes it on sliding layers only.
        assert [s.sliding_window for s in specs] == [8, None, 8, None]
    if run["type"] == "opt":
        assert all(s.scale == 1.0 for s in specs)  # OPT scales the query itself and passes scaling=1.0
    if run["type"] == "qwen2":
        fused = [r for r in run["report"].records if r.name.endswith("qkv_proj")]
        assert [r.new_class for r in fused] == ["QKVParallelLinear"] * len(specs)
        assert all({n.rsplit(".", 1)[-1] for n in r.fused_from} == {"q_proj", "k_proj", "v_proj"} for r in fused)
        assert len(run["qkv_biases"]) == len(specs) and min(run["qkv_biases"]) > 0.5  # the biases loaded
        assert {(s.num_heads, s.num_kv_heads, s.head_size) for s in specs} == {(4, 2, 32)}
