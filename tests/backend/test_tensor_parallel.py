"""Tensor parallelism on the CPU wheel: two ranks in worker processes, linears split by tp_plan."""

from __future__ import annotations

import pytest

from hfvllm_lab import zoo
from hfvllm_lab.backend.records import LINEAR, BuildReport
from hfvllm_lab.errors import UnsupportedModelError
from hfvllm_lab.parity import compare_generations
from hfvllm_lab.probes.payloads import AttentionCountsPayload, MemoryPayload
from tests.conftest import engine_settings

PROMPTS = ["Hello world", "The quick brown fox"]


@pytest.fixture
def tp_env(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core list per rank


def tp2(name):
    from hfvllm_lab.paths.vllm_path import VllmPath

    return VllmPath(engine_settings(zoo.path(name), tensor_parallel_size=2,
                                    extra={"distributed_executor_backend": "mp"}))


def test_tp2_splits_by_the_plan_and_matches_transformers(tp_env):
    from hfvllm_lab.paths.hf_path import HfPath

    path = tp2("qwen3")
    try:
        report = path.rpc("lab_build_report")
        memory = path.rpc("lab_memory")
        path.rpc("lab_attention_start")
        out = path.generate(PROMPTS, 8)
        counts = path.rpc("lab_attention_counts")
    finally:
        path.close()
    assert isinstance(report, BuildReport)  # the typed payload, pickled back from rank 0's process
    classes = {r.name.rsplit(".", 1)[-1]: r.new_class for r in report.records if r.kind == LINEAR}
    # q/k/v and gate/up are fused (column-parallel by construction), o/down split by rows.
    assert classes["qkv_proj"] == "QKVParallelLinear" and classes["gate_up_proj"] == "MergedColumnParallelLinear"
    assert classes["o_proj"] == classes["down_proj"] == "RowParallelLinear"
    assert report.tensor_parallel_size == 2
    assert {(a.num_heads, a.num_kv_heads) for a in report.attention} == {(2, 1)}
    assert isinstance(memory, MemoryPayload) and memory.kv_cache_bytes > 0 and memory.param_bytes > 0
    assert isinstance(counts, AttentionCountsPayload) and counts.forward_calls > 0
    assert len(counts.layers) == len(report.attention)
    assert all(sum(layer.counts.values()) == counts.forward_calls for layer in counts.layers)
    hf = HfPath(zoo.path("qwen3")).generate(PROMPTS, 8)
    for a, b in zip(hf, out):
        verdict = compare_generations(a, b)
        assert verdict.ok and verdict.max_prompt_logprob_diff < 1e-3, verdict.reason


def test_kv_heads_that_do_not_split_are_refused(tp_env):
    with pytest.raises(UnsupportedModelError, match="1 KV heads do not split evenly"):
        tp2("gemma")  # MQA: one KV head


def fused_moe_shards(model) -> list[tuple[int, int, int]]:
    """Run on each rank (module level: the mp executor pickles it by reference): each fused MoE's
    (tp size, tp rank, weight rows loaded from gate+up) — the CPU kernel pads the per-rank width."""
    out = []
    for mod in model.modules():
        if type(mod).__name__ == "LabFusedExperts":
            experts = mod.runner.routed_experts
            config = experts.moe_config.moe_parallel_config
            out.append((config.tp_size, config.tp_rank, int((experts.w13_weight[0].abs().sum(-1) > 0).sum())))
    return out


def test_tp2_splits_fused_moe_experts_and_matches_transformers(tp_env):
    """Per-expert checkpoint keys loaded into vLLM's FusedMoE, each rank holding half of every
    expert's intermediate size (vLLM's tensor-parallel split of experts)."""
    from hfvllm_lab.backend.records import EXPERTS, REPLACED
    from hfvllm_lab.paths.hf_path import HfPath

    path = tp2("qwen2-moe")
    try:
        report = path.rpc("lab_build_report")
        shards = path.apply_model(fused_moe_shards)
        out = path.generate(PROMPTS, 8)
    finally:
        path.close()
    experts = [r for r in report.records if r.kind == EXPERTS]
    assert experts and all(r.action == REPLACED and r.new_class == "LabFusedExperts" for r in experts)
    # Intermediate 32 split over 2 ranks: each loads 16 gate + 16 up rows of every expert.
    assert [{s for s in rank} for rank in shards] == [{(2, 0, 32)}, {(2, 1, 32)}]
    hf = HfPath(zoo.path("qwen2-moe")).generate(PROMPTS, 8)
    for a, b in zip(hf, out):
        verdict = compare_generations(a, b)
        assert verdict.ok and verdict.max_prompt_logprob_diff < 1e-3, verdict.reason
