"""Weights after the first load: a trainer's weights pushed in buckets (as RL frameworks sync them)
make the engine compute what the trainer's model computes — fused layers, packed CPU kernels and
fused MoE experts included — and a later load takes any subset, down to one expert."""

from __future__ import annotations

import warnings

import pytest
import torch

from hfvllm_lab import Session, zoo
from hfvllm_lab.errors import WeightsError

PROMPT = "The quick brown fox jumps over"
STEPS = 4


def perturbed_hf(name: str, dtype=torch.float32, scale: float = 0.02, seed: int = 0):
    """The checkpoint's transformers model with every parameter moved: a 'trained' policy."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(zoo.path(name), dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=gen) * scale).to(p.dtype))
    return model.eval()


def buckets(model, n: int) -> list[list[tuple[str, torch.Tensor]]]:
    """transformers' own state dict (its names, packed experts) cut into n buckets in order, so a
    layer's q/k/v or gate/up can land in different buckets."""
    items = [(k, v.detach().clone()) for k, v in model.state_dict().items()]
    size = -(-len(items) // n)
    return [items[i:i + size] for i in range(0, len(items), size)]


def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def open_session(name: str, **kwargs) -> Session:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Session(name, **kwargs)


def engine_distance(session: Session, model, stale=None) -> tuple[float, float]:
    """Greedy tokens equal the model's; (max |dlogp| of the engine's teacher-forced distributions
    against the model's, the same against `stale`: the model the engine held before the update)."""
    gen = session.generate([PROMPT], STEPS)[0]
    seq = gen.prompt_token_ids + gen.token_ids
    truth = hf_logprobs(model, seq)
    n = len(gen.prompt_token_ids)
    assert gen.token_ids == [int(truth[n - 1 + i].argmax()) for i in range(STEPS)]
    engine = session.score_tokens([seq])[0][: len(seq) - 1]
    far = float((engine - hf_logprobs(stale, seq)[: len(seq) - 1]).abs().max()) if stale is not None else 0.0
    return float((engine - truth[: len(seq) - 1]).abs().max()), far


def assert_engine_matches(session: Session, model, tol: float) -> None:
    assert engine_distance(session, model)[0] < tol


@pytest.mark.parametrize("name", ["llama", "qwen2-moe"])
def test_three_buckets_from_a_perturbed_model_make_the_engine_match_it(name):
    model = perturbed_hf(name)
    with open_session(name) as s:
        clean = s.generate([PROMPT], STEPS)[0].token_ids
        for bucket in buckets(model, 3):
            loaded = s.load_weights(bucket)
            assert loaded  # every bucket lands somewhere
        assert_engine_matches(s, model, 1e-3)
        assert s.generate([PROMPT], STEPS)[0].token_ids != clean  # the update really took effect
        report = s.engine.apply_model(lambda m: m.lab_report)[0]
        assert len(report.weight_updates) == 3 and "repacked" in report.weight_updates[0]
        fused = [r.name for r in s.replacements.records if r.action == "fused"]
        assert fused  # q/k/v and gate/up were fused, and still took the shards bucket by bucket
        if name == "qwen2-moe":
            assert any(r.kind == "experts" and r.action == "replaced" for r in s.replacements.records)
        assert "stay loadable" in s.memory.note


def test_one_expert_and_one_projection_update_only_their_rows():
    """Checkpoint-style per-expert names: one expert's gate and down arrive alone (transformers' converter
    would wait for every expert); a q_proj alone updates its slice of the fused qkv_proj."""
    from transformers import AutoModelForCausalLM

    name = "qwen2-moe"
    model = AutoModelForCausalLM.from_pretrained(zoo.path(name), dtype=torch.float32).eval()
    layer = model.model.layers[1]
    gen = torch.Generator().manual_seed(3)
    experts = layer.mlp.experts
    inter = experts.down_proj.shape[-1]
    gate = torch.randn(inter, experts.gate_up_proj.shape[-1], generator=gen) * 0.3
    down = torch.randn(experts.down_proj.shape[1], inter, generator=gen) * 0.3
    q = torch.randn(layer.self_attn.q_proj.weight.shape, generator=gen) * 0.1
    layer0_k = model.model.layers[0].self_attn.k_proj.weight.detach().clone()
    with torch.no_grad():
        experts.gate_up_proj[2, :inter].copy_(gate)
        experts.down_proj[2].copy_(down)
        layer.self_attn.q_proj.weight.copy_(q)
    with open_session(name) as s:
        s.load_weights([("model.layers.1.mlp.experts.2.gate_proj.weight", gate),
                        ("model.layers.1.mlp.experts.2.down_proj.weight", down),
                        ("model.layers.1.self_attn.q_proj.weight", q)])
        assert_engine_matches(s, model, 1e-3)
        with pytest.raises(WeightsError, match="match nothing"):
            s.load_weights([("model.layers.0.self_attn.k_proj.weight", layer0_k),
                            ("model.layers.1.no_such.weight", q)])
        # the refused bucket's valid tensor (unchanged values) landed and every layer was repacked from
        # what it holds: the engine still computes the model, nothing half-updated or stale
        assert_engine_matches(s, model, 1e-3)


def test_bf16_weights_packed_by_the_cpu_kernels_update_too():
    """bf16 rounds differently in the engine's kernels and in transformers, so the engine is held to
    being much nearer the pushed model than the one it held before."""
    from transformers import AutoModelForCausalLM

    model = perturbed_hf("llama", dtype=torch.bfloat16, scale=0.05)
    before = AutoModelForCausalLM.from_pretrained(zoo.path("llama"), dtype=torch.bfloat16).eval()
    with open_session("llama", dtype="bfloat16") as s:
        for bucket in buckets(model, 3):
            s.load_weights(bucket)
        near, far = engine_distance(s, model, stale=before)
    assert near < 0.3 and far > 5 * near, (near, far)


def test_updates_off_refuse_a_second_load_with_the_reason():
    with open_session("llama", engine_args={"hf_overrides": {"lab_weight_updates": False}}) as s:
        assert s.replacements.options["weight updates after load"].startswith("off")
        assert "stay loadable" not in s.memory.note
        with pytest.raises(WeightsError, match="lab_weight_updates=False"):
            s.load_weights([("lm_head.weight", torch.zeros(1))])
