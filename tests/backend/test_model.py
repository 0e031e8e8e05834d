"""The lab backend inside the real vLLM engine, per zoo model, against plain transformers."""

from __future__ import annotations

import pytest
from torch.profiler import ProfilerActivity, profile

from hfvllm_lab import zoo
from hfvllm_lab.backend.records import EMBEDDING, FUSED, KEPT, LINEAR, LM_HEAD, NORM, REPLACED, ROTARY, TIED
from hfvllm_lab.parity import compare_generations
from tests.conftest import engine_settings, hf_module_counts, hf_parameter_bytes

MAX_TOKENS = 16
KERNELS = ("_C::rms_norm", "_C::rotary_embedding")


@pytest.fixture(scope="module", params=zoo.names())
def run(request, prompts):
    """One engine per zoo model: its build report, its generations, and HF's generations."""
    from hfvllm_lab.paths.hf_path import HfPath
    from hfvllm_lab.paths.vllm_path import VllmPath

    name = request.param
    model_dir = zoo.path(name)
    with VllmPath(engine_settings(model_dir)) as path:
        report = path.apply_model(lambda m: m.lab_report)[0]
        tied = path.apply_model(
            lambda m: m.hf.get_output_embeddings().weight.data_ptr()
            == m.hf.get_input_embeddings().weight.data_ptr()
        )[0]
        # the engine runs in this process (conftest): the profiler sees the kernels the steps called
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            vllm_out = path.generate(prompts, MAX_TOKENS)
        kernels = {e.key: e.count for e in prof.key_averages() if e.key in KERNELS}
    hf = HfPath(model_dir)
    hf_out = hf.generate(prompts, MAX_TOKENS)
    hf.close()
    return dict(name=name, report=report, tied=tied, vllm=vllm_out, hf=hf_out, kernels=kernels)


def test_prompts_differ_in_length(prompts):
    assert len({len(p) for p in prompts}) == len(prompts) >= 3


def test_greedy_tokens_match_transformers(run):
    for v, h in zip(run["vllm"], run["hf"]):
        assert v.prompt_token_ids == h.prompt_token_ids
        assert len(v.token_ids) == len(h.token_ids) == MAX_TOKENS
        verdict = compare_generations(h, v, top_k=5, max_gap=0.05)
        assert verdict.ok, f"{run['name']} {v.prompt!r}: {verdict.reason}"


def test_prompt_logprobs_match_transformers(run):
    for v, h in zip(run["vllm"], run["hf"]):
        diff = compare_generations(h, v).max_prompt_logprob_diff
        assert diff is not None and diff < 1e-3, f"{run['name']} {v.prompt!r}: {diff}"


def test_records_cover_every_linear_norm_and_embedding(run):
    report = run["report"]
    expected = hf_module_counts(run["name"])
    for kind, count in expected.items():
        records = [r for r in report.records if r.kind == kind]
        # A fused layer stands for the HF modules it merged (q/k/v, gate/up), named in fused_from.
        assert sum(len(r.fused_from) or 1 for r in records) == count, kind
        assert all(r.original_class and (r.new_class or r.action == KEPT) for r in records), kind
    # Every candidate is swapped, except mean-centred LayerNorms (Cohere, GPT-NeoX), kept with the reason.
    kept_norms = zoo.spec(run["name"]).model_type in ("cohere", "gpt_neox")
    for r in report.records:
        if r.kind in (LINEAR, EMBEDDING) or (r.kind == NORM and not kept_norms):
            assert r.action in (REPLACED, TIED, FUSED), r
        elif r.kind == NORM:
            assert r.action == KEPT and ("neither" in r.reason or "mean-centred" in r.reason), r
    names = [r.name for r in report.records]
    assert len(names) == len(set(names))


def test_norm_records_carry_width_and_convention(run):
    norms = {r.name: r for r in run["report"].records if r.kind == NORM and r.action != KEPT}
    gemma_style = zoo.spec(run["name"]).model_type.startswith("gemma")
    for r in norms.values():
        # on the CPU, x*w norms run vLLM's C kernel in eager steps (backend/norms.py), and say so
        assert r.new_class == ("GemmaRMSNorm" if gemma_style else "KernelRMSNorm")
        assert ("_C.rms_norm" in r.reason) == (not gemma_style)
        assert r.reason.endswith(f"width {r.shape[0]}")
    if run["name"] == "qwen3":
        assert norms["model.layers.0.self_attn.q_norm"].shape == (32,)
        assert norms["model.norm"].shape == (64,)


def test_meta_construction_holds_zero_parameter_bytes(run):
    phases = {p.phase: p for p in run["report"].phases}
    assert phases["meta"].device_bytes == 0
    assert phases["meta"].meta_bytes == hf_parameter_bytes(run["name"]) > 0
    assert phases["materialized"].meta_bytes == 0
    # Materialized = every HF parameter, plus vLLM's padding of vocabulary rows to a multiple of
    # 64 (once when tied, twice when the LM head has its own table).
    kw = zoo.spec(run["name"]).config_kwargs()
    pad_rows = -kw["vocab_size"] % 64
    tables = 1 if kw.get("tie_word_embeddings") else 2
    padding = pad_rows * kw["hidden_size"] * 4 * tables
    assert phases["materialized"].device_bytes == hf_parameter_bytes(run["name"]) + padding
    assert phases["loaded"].device_bytes == phases["materialized"].device_bytes


def test_lm_head_is_tied_exactly_when_the_config_ties_it(run):
    ties = zoo.spec(run["name"]).config_kwargs().get("tie_word_embeddings", False)
    head = next(r for r in run["report"].records if r.kind == LM_HEAD)
    assert run["tied"] == ties
    assert head.action == (TIED if ties else REPLACED)
    assert head.new_class == "ParallelLMHead"


def test_attention_specs_follow_the_hf_modules(run):
    specs = run["report"].attention
    kw = zoo.spec(run["name"]).config_kwargs()
    assert [s.layer for s in specs] == list(range(kw["num_hidden_layers"]))
    for s in specs:
        assert s.head_size == kw["head_dim"]
        assert s.num_kv_heads == kw.get("num_key_value_heads", kw["num_attention_heads"])
    if run["name"] == "gemma2":
        assert [s.sliding_window for s in specs] == [8, None, 8, None]
        assert all(s.logits_soft_cap == 5.0 for s in specs)
        assert specs[0].scale == pytest.approx(64**-0.5)
        assert run["report"].logits["soft_cap"] == 4.0
    if run["name"] == "mistral":
        assert all(s.sliding_window == 8 for s in specs)
    if run["name"] == "granite":
        assert all(s.scale == 0.25 for s in specs)  # attention_multiplier, not head_dim**-0.5
        assert run["report"].logits["scale"] == 2.0  # logits / logits_scaling 0.5
        assert run["report"].logits["steps"] == ["div config.logits_scaling"]
        assert "scale 2 (div config.logits_scaling)" in run["report"].summary()
    if run["name"] == "cohere":
        assert run["report"].logits["scale"] == 0.5


def test_eager_cpu_steps_run_the_kernels_the_records_name(run):
    """KernelRMSNorm and the rotary dispatch are claims in the log: the engine's steps must make them."""
    records = run["report"].records
    norms = sum(r.new_class == "KernelRMSNorm" for r in records)
    rotated = any(r.kind == ROTARY and "rotate q/k with vLLM's _C.rotary_embedding" in r.reason for r in records)
    calls = run["kernels"]
    assert (calls.get("_C::rms_norm", 0) > 0) == (norms > 0), (run["name"], calls)
    assert (calls.get("_C::rotary_embedding", 0) > 0) == rotated, (run["name"], calls)
    if rotated:  # one call per attention layer per step, no layer left on transformers' ops
        assert calls["_C::rotary_embedding"] % len(run["report"].attention) == 0
    if run["name"] == "llama":  # the default family engages both
        assert norms and rotated
