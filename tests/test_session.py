"""The Session over one engine: every observation checked against real values."""

from __future__ import annotations

import pytest

from hfvllm_lab import zoo
from hfvllm_lab.backend.records import ATTENTION, LINEAR, NORM
from hfvllm_lab.device import available_kinds, resolve_device
from hfvllm_lab.errors import AttentionPathError, DeviceError, InputError, ModelNotFoundError
from hfvllm_lab.results.replacements import REPLACED, ROUTED, SKIPPED, TIED
from hfvllm_lab.results.timing import DECODE, PREFILL
from tests.conftest import hf_module_counts, hf_parameter_bytes

MODEL = "llama"
# Device-derived expectations: refuse only a device kind that is absent here; float16 only on the CPU.
ABSENT_KIND = next((kind for kind in ("cuda", "mlu") if kind not in available_kinds()), None)
ON_CPU = resolve_device("auto") == "cpu"


def expected_attention_backend(head_size: int, dtype: str) -> str:
    """The attention backend vLLM's platform selects here for this head size and dtype."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.platforms import current_platform
    from vllm.v1.attention.selector import get_attn_backend

    with set_current_vllm_config(VllmConfig()):
        name = get_attn_backend(head_size, getattr(torch, dtype), None).get_name()
    assert name == "CPU_ATTN" or not current_platform.is_cpu(), name
    return name


@pytest.fixture(scope="module")
def session():
    from hfvllm_lab import Session

    with Session(MODEL) as s:
        yield s


def test_replacement_log_counts_equal_the_hf_models_modules(session):
    log = session.replacements
    expected = hf_module_counts(MODEL)
    for kind, count in expected.items():  # a fused layer stands for the HF modules in its fused_from
        assert sum(len(r.fused_from) or 1 for r in log.records if r.kind == kind) == count, kind
    counts = log.counts()
    layers = sum(r.kind == ATTENTION for r in log.records)
    # Per layer q/k/v -> one QKVParallelLinear, gate/up -> one MergedColumnParallelLinear (fused by default);
    # o_proj, down_proj and the LM head replaced one to one.
    assert counts["Linear"] == {"fused": 2 * layers, "replaced": expected[LINEAR] - 5 * layers + 1}
    assert counts["LlamaRMSNorm"] == {"replaced": expected[NORM]}
    assert counts["LlamaAttention"] == {"routed": expected[ATTENTION]}
    assert len(log.to_frame()) == len(log.records)


def test_tree_tells_replaced_routed_and_skipped_apart(session):
    tree = {n.name: n for n in session.replacements.tree}
    assert tree["model.layers.0.self_attn.o_proj"].status == REPLACED
    assert tree["model.layers.0.self_attn.o_proj"].module_class == "ReplicatedLinear"
    assert tree["model.layers.0.self_attn.o_proj"].original_class == "Linear"
    # q_proj stays in the tree as a slice of the fused QKV layer it was merged into.
    assert tree["model.layers.0.self_attn.q_proj"].status == "fused"
    assert tree["model.layers.0.self_attn.q_proj"].module_class == "FusedSlice"
    assert tree["model.layers.0.self_attn.qkv_proj"].module_class == "QKVParallelLinear"
    assert tree["model.layers.0.self_attn"].status == ROUTED
    assert tree["model.layers.0.mlp"].status == SKIPPED and tree["model.layers.0.mlp"].reason == "container"
    assert tree["model.layers.0.mlp.act_fn"].module_class == "SiluAndMul"
    assert tree["model.layers.0.mlp.act_fn"].reason == "not a replacement candidate"
    assert tree["lm_head"].module_class == "ParallelLMHead"
    assert not any(name.endswith("lab_attn") for name in tree)
    assert TIED not in {n.status for n in tree.values()}  # llama's head is untied


def test_memory_phases_and_saving(session):
    mem = session.memory
    assert [p.phase for p in mem.phases] == ["before", "meta", "replaced", "materialized", "loaded", "kv_cache"]
    meta, materialized = mem.phase("meta"), mem.phase("materialized")
    assert meta.param_bytes == 0 and meta.meta_bytes == hf_parameter_bytes(MODEL)
    assert mem.eager_param_bytes == hf_parameter_bytes(MODEL)
    assert materialized.meta_bytes == 0 and materialized.param_bytes >= mem.eager_param_bytes
    assert mem.meta_saving_bytes == mem.eager_param_bytes  # nothing was on the device after meta
    assert all(p.source == "rss" and p.process_bytes > 0 for p in mem.phases)
    requested = session.engine.kwargs["kv_cache_memory_bytes"]
    assert 0 < mem.phase("kv_cache").kv_cache_bytes <= requested
    assert len(mem.to_frame()) == len(mem.phases)


def test_attention_calls_equal_layers_times_forward_calls(session):
    session.reset_attention_counts()
    session.generate(["Hello world", "abc"], max_tokens=5)
    report = session.attention
    layers = zoo.spec(MODEL).config_kwargs()["num_hidden_layers"]
    assert report.selected == "vllm" and len(report.rows) == layers
    assert report.forward_calls >= 5  # one prefill step + decode steps
    assert all(r.calls == report.forward_calls for r in report.rows)
    backend = expected_attention_backend(zoo.spec(MODEL).config_kwargs()["head_dim"], session.dtype)
    assert all(r.implementation == backend and r.fallbacks == 0 for r in report.rows)
    assert report.implementations() == {backend: layers * report.forward_calls}


def test_profile_splits_prefill_and_decode_and_sums_within_the_step(session):
    timing = session.profile(["Hello world", "The quick brown fox"], max_tokens=6)
    assert timing.steps == {PREFILL: 1, DECODE: 5}
    assert timing.warmup_steps == 1 and timing.timer == "perf_counter"
    layers = zoo.spec(MODEL).config_kwargs()["num_hidden_layers"]
    for phase in (PREFILL, DECODE):
        rows = timing.phase_rows(phase)
        assert all(r.mean_seconds > 0 for r in rows)
        kinds = {r.kind for r in rows}
        assert {"embedding", "layer", "attention", "mlp", "norm", "final_norm", "lm_head"} <= kinds
        assert sum(r.kind == "layer" for r in rows) == layers
        assert 0 < timing.top_level_seconds(phase) <= timing.step_seconds[phase]
        assert timing.probe_overhead_seconds(phase) > 0


def test_profile_leaves_no_hooks_behind(session):
    def hooks(model):
        fns = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
        return sorted(getattr(f, "__name__", type(f).__name__) for f in fns), "compute_logits" in vars(model)

    before = session.engine.apply_model(hooks)[0]
    session.profile(["Hello"], max_tokens=2, warmup=0)
    assert session.engine.apply_model(hooks)[0] == before
    # only the build's own: the attention probe's forward counter, on the CPU the rotary module's
    # table hook that feeds vLLM's rotary kernel (backend/rope.py), and on each vLLM Linear the
    # pre-hook that hands vLLM's GEMM row-contiguous inputs (backend/replace.py)
    others = [name for name in before[0] if name != "_rows_contiguous"]
    assert len(others) == 2 and "remember_tables" in others and before[1] is False, before
    replicated = sum(r.new_class == "ReplicatedLinear" for r in session.replacements.records)
    assert 0 < before[0].count("_rows_contiguous") == replicated, before


def test_compare_against_itself_reports_zero_difference(session):
    cmp = session.compare(["Hello world", "abc"], max_tokens=6, against="vllm")
    assert cmp.ok and cmp.max_logprob_diff == 0.0
    assert all(p.parity.first_divergence is None for p in cmp.prompts)
    assert all(p.parity.max_prompt_logprob_diff == 0.0 for p in cmp.prompts)


def test_compare_with_transformers(session):
    cmp = session.compare(max_tokens=8)
    assert cmp.ok, [p.parity.reason for p in cmp.prompts]
    assert cmp.max_logprob_diff < 1e-3
    assert cmp.residency.startswith("both resident")
    assert set(cmp.figures) == {"hf", "vllm"} and set(cmp.timing) == {"hf", "vllm"}
    assert cmp.figures["hf"].generated_tokens == cmp.figures["vllm"].generated_tokens == 3 * 8
    assert cmp.figures["hf"].tokens_per_second > 0 and cmp.figures["vllm"].tokens_per_second > 0
    assert cmp.figures["hf"].param_bytes < cmp.figures["vllm"].param_bytes + (1 << 20)
    hf_layers = {r.module for r in cmp.timing["hf"].rows}
    assert {r.module for r in cmp.timing["vllm"].rows} == hf_layers  # same names: side by side
    assert len(cmp.to_frame()) == 3


def test_compare_sequentially_frees_and_rebuilds_the_engine(session):
    before = session.engine
    cmp = session.compare(["Hello"], max_tokens=4, residency="sequential")
    assert cmp.ok and cmp.residency.startswith("sequential")
    assert before.closed and session.engine is not before
    assert len(session.generate(["Hello"], 2)[0].token_ids) == 2


def test_bisect_names_the_perturbed_layer(session):
    clean = session.bisect("Hello world")
    assert clean.first_divergent is None and len(clean.rows) > 10

    def perturb(model, delta):
        model.hf.model.layers[2].post_attention_layernorm.weight.data.add_(delta)

    session.engine.apply_model(lambda m: perturb(m, 0.5))
    try:
        broken = session.bisect("Hello world")
    finally:
        session.engine.apply_model(lambda m: perturb(m, -0.5))
    assert broken.first_divergent == "model.layers.2.post_attention_layernorm"
    ok_rows = [r.module for r in broken.rows if r.ok]
    assert "model.layers.2.self_attn" in ok_rows


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(model="no-such-model"), ModelNotFoundError, "not a zoo name"),
        (dict(model=MODEL, device="tpu"), DeviceError, "unsupported device"),
        pytest.param(dict(model=MODEL, device=ABSENT_KIND), DeviceError, "not available",
                     marks=pytest.mark.skipif(ABSENT_KIND is None, reason="cuda and mlu are both present"),
                     id=f"absent-device-{ABSENT_KIND}"),
        pytest.param(dict(model=MODEL, dtype="float16"), DeviceError, "float16",
                     marks=pytest.mark.skipif(not ON_CPU, reason="only vLLM's CPU backend refuses float16"),
                     id="float16-on-cpu"),
        (dict(model=MODEL, attention="flash"), AttentionPathError, "unknown attention"),
        (dict(model=MODEL, backend="nope"), InputError, "unknown backend"),
    ],
)
def test_bad_session_arguments_leave_the_kernel_usable(session, kwargs, error, message):
    from hfvllm_lab import Session

    with pytest.raises(error, match=message):
        Session(**kwargs)
    assert not session.closed and len(session.generate(["ok"], 1)[0].token_ids) == 1


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda s: s.generate([]), InputError, "prompts is empty"),
        (lambda s: s.generate([""]), InputError, "non-empty string"),
        (lambda s: s.generate(["x"], max_tokens=0), InputError, "max_tokens"),
        (lambda s: s.profile(["x"], max_tokens=-1), InputError, "max_tokens"),
        (lambda s: s.compare([]), InputError, "prompts is empty"),
        (lambda s: s.compare(["x"], against="nobody"), InputError, "against"),
    ],
)
def test_bad_run_arguments(session, call, error, message):
    with pytest.raises(error, match=message):
        call(session)
    assert len(session.generate(["ok"], 1)[0].token_ids) == 1
