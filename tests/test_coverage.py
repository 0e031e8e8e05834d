"""The coverage tool: the shrinker's configs (offline, no engine) and the runner end to end on two
architectures through the lab path (one passes, one is refused with the lab's reason)."""

from __future__ import annotations

import json

import pytest

from hfvllm_lab.coverage.report import ERROR, FAIL, PASS, REFUSED, SKIP, CoverageReport, CoverageRow
from hfvllm_lab.zoo import shrink

CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}


def built_config(model_type: str):
    return shrink.build_config(shrink.plan(model_type))


@pytest.mark.parametrize("model_type", ["llama", "qwen2_moe", "mixtral", "gpt_neox", "gemma2", "gemma3_text"])
def test_shrunk_configs_are_tiny_and_consistent(model_type):
    from hfvllm_lab.backend.attention import head_geometry

    config = built_config(model_type).get_text_config()
    heads, kv_heads, head_size = head_geometry(config)
    assert config.hidden_size == 64
    assert 2 <= config.num_hidden_layers <= 4
    assert head_size in CPU_HEAD_SIZES and head_size == 32
    assert heads % kv_heads == 0
    assert config.vocab_size == 260  # the zoo's byte-level tokenizer
    assert (config.bos_token_id, config.eos_token_id) == (256, 257)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        assert len(layer_types) == config.num_hidden_layers


def test_moe_shrinks_to_four_experts_top_two():
    mixtral = built_config("mixtral")
    assert (mixtral.num_local_experts, mixtral.num_experts_per_tok) == (4, 2)
    qwen = built_config("qwen2_moe")
    assert (qwen.num_experts, qwen.num_experts_per_tok) == (4, 2)
    assert qwen.moe_intermediate_size == 64 and qwen.shared_expert_intermediate_size == 64


def test_per_layer_lists_keep_one_layer_per_kind():
    gemma2 = built_config("gemma2")
    assert gemma2.layer_types == ["sliding_attention", "full_attention"]
    assert gemma2.sliding_window == 8
    assert (gemma2.attn_logit_softcapping, gemma2.final_logit_softcapping) == (5.0, 4.0)  # caps that bite
    gemma3 = shrink.plan("gemma3_text")
    assert gemma3.kept_layers == [0, 5]  # 5 sliding then 1 full in the default: one of each
    llama4 = shrink.plan("llama4_text")  # no_rope_layers and chunked layer types resampled together
    cfg = llama4.config
    assert len(cfg["no_rope_layers"]) == len(cfg["layer_types"]) == cfg["num_hidden_layers"]
    assert set(cfg["layer_types"]) == {"chunked_attention", "full_attention"}
    assert cfg["moe_layers"] == list(range(cfg["num_hidden_layers"]))


def test_gpt_neox_partial_rotary_and_heads():
    config = built_config("gpt_neox")
    assert config.num_attention_heads == 2 and config.hidden_size // config.num_attention_heads == 32
    assert 0 < config.rope_parameters["partial_rotary_factor"] <= 1


def test_multimodal_and_non_text_types_cannot_be_shrunk():
    with pytest.raises(shrink.CannotShrinkError, match="gemma3_text"):
        shrink.plan("gemma3")
    with pytest.raises(shrink.CannotShrinkError, match="audio"):
        shrink.plan("musicgen")
    with pytest.raises(shrink.CannotShrinkError, match="not in transformers' causal-LM"):
        shrink.plan("no_such_model")


def test_digest_is_stable_and_content_addressed():
    assert shrink.plan("llama").digest() == shrink.plan("llama").digest()
    assert shrink.plan("llama").digest() != shrink.plan("mistral").digest()
    path = shrink.checkpoint_dir(shrink.plan("llama"))
    assert path.name.startswith("shrunk-llama-") and path.parent.name == "zoo"


def test_mixtral_checkpoint_is_saved_per_expert_with_scaled_logits():
    from safetensors import safe_open

    directory = shrink.shrunk_path("mixtral")
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(".experts.0." in k for k in keys) and any(".experts.3." in k for k in keys), keys[:20]
    meta = json.loads((directory / "shrink.json").read_text())
    assert meta["model_type"] == "mixtral" and (directory / "tokenizer.json").is_file()
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([shrink.sample_ids()])).logits[0]
    assert 1.6 < logits.std(-1).mean().item() < 2.4


@pytest.mark.parametrize(("model_type", "was_constant"), [
    ("qwen2", "model.layers.0.self_attn.q_proj.bias"),  # zero at init
    ("doge", "model.layers.0.self_attn.A"),  # zero at init: its dynamic mask term vanished with it
])
def test_no_parameter_is_left_constant(model_type, was_constant):
    from safetensors.torch import load_file

    tensors = load_file(str(shrink.shrunk_path(model_type) / "model.safetensors"))
    assert tensors[was_constant].abs().min() > 0
    constant = [k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1 and (t == t.flatten()[0]).all()]
    assert not constant


def test_hybrid_and_recurrent_configs_are_consistent():
    """Rules that made SKIP types runnable: Granite 4.0-H gets an attention layer, Mamba-2 heads fill
    expand x hidden, Zamba's shared attention stays 2 x hidden wide, xLSTM's q/k heads are 32 wide."""
    granite = built_config("granitemoehybrid")
    assert granite.layers_block_type == ["linear_attention", "full_attention"]
    zamba2 = built_config("zamba2")
    assert zamba2.n_mamba_heads * zamba2.mamba_headdim == zamba2.mamba_expand * zamba2.hidden_size
    assert zamba2.attention_hidden_size == 2 * zamba2.hidden_size
    xlstm = built_config("xlstm")
    assert xlstm.qk_head_dim == xlstm.v_head_dim == 32
    hrm = built_config("hrm_text")
    assert hrm.num_hidden_layers == hrm.num_layers_per_stack * hrm.H_cycles * (hrm.L_cycles + 1)


@pytest.mark.parametrize("model_type", ["mamba", "granitemoehybrid", "openai-gpt"])
def test_reference_runs_attention_free_and_cacheless_models(model_type):
    """mamba's state is `cache_params`, openai-gpt returns none (its steps rerun the sequence): the
    coverage's transformers reference decodes both, with the state agreeing with a full rerun."""
    from hfvllm_lab.coverage.child import PROMPTS, StateAdapter, decoding_state, hf_reference
    from hfvllm_lab.paths.hf_path import HfPath

    directory = shrink.shrunk_path(model_type)
    reference = hf_reference(directory)
    assert [len(g.token_ids) for g in reference] == [8, 8]
    path = HfPath(directory, "cpu", "float32", "eager")
    path.model = StateAdapter(path.model, None)  # no state: every step reruns the whole sequence
    rerun = path.generate(PROMPTS, 8)
    for ref, full in zip(reference, rerun):
        assert ref.token_ids == full.token_ids
        assert max(abs(ref.top_logprobs[i][t] - full.top_logprobs[i][t]) for i, t in enumerate(ref.token_ids)) < 1e-4
    assert decoding_state(path.model.model) == {"mamba": "cache_params", "granitemoehybrid": "past_key_values",
                                                "openai-gpt": None}[model_type]


def test_reference_refuses_bidirectional_models():
    from hfvllm_lab.coverage.child import hf_reference

    with pytest.raises(shrink.CannotShrinkError, match="not a causal LM"):
        hf_reference(shrink.shrunk_path("xlm"))


def test_report_views():
    report = CoverageReport(rows=[
        CoverageRow("llama", "LlamaForCausalLM", "lab", PASS, "", 1.0),
        CoverageRow("bert", "BertLMHeadModel", "lab", REFUSED, "UnsupportedModelError: head", 1.0),
        CoverageRow("x", "XForCausalLM", "lab", FAIL, "prompt 0: step 1: 3 vs 4", 1.0),
        CoverageRow("y", "YForCausalLM", "lab", ERROR, "timeout after 5 s", None),
        CoverageRow("fuyu", "FuyuForCausalLM", "lab", SKIP, "not text-only", None),
    ], paths=("lab",), timeout_s=5, not_run=["z"])
    assert report.counts()["lab"] == {PASS: 1, FAIL: 1, REFUSED: 1, ERROR: 1, SKIP: 1}
    assert [r.model_type for r in report.failures()] == ["x", "y"]
    assert len(report.to_frame()) == 5
    assert CoverageReport.from_dict(json.loads(report.to_json())).rows == report.rows
    md = report.markdown()
    assert "PARTIAL" in md and "`z`" in md and "timeout after 5 s" in md
    assert "REFUSED: UnsupportedModelError" in report.text()


def test_runner_end_to_end_on_the_lab_path(tmp_path):
    """llama passes; gemma4_text (head size per layer: config.head_dim is not even readable) passes.
    (llama4_text's chunked local attention: tests/backend/test_mla_and_heads.py, with chunks it crosses.)"""
    from hfvllm_lab.coverage.runner import run_coverage

    report = run_coverage(["llama", "gemma4_text"], timeout=120, progress=False, log_dir=tmp_path)
    lab = {r.model_type: r for r in report.rows}
    assert report.paths == ("lab",) and not report.not_run
    assert lab["llama"].verdict == PASS, lab["llama"]
    assert lab["gemma4_text"].verdict == PASS, lab["gemma4_text"]


def test_runner_passes_the_architectures_fixed_for_coverage():
    """Each would fail if its fix broke: bert-generation's head bias is tied to lm_head.bias and stored
    once (non-zero in the shrunk checkpoint); hyperclovax multiplies its logits by logits_scaling (2.0
    in the shrunk config: dropped, the logprobs move by ~3.5) where Granite divides; gpt2 reshapes the attention output from transformers' 4-D convention and its
    ignore pattern `attn.bias` also matches the real `attn.c_attn.bias`."""
    from transformers import AutoConfig

    from hfvllm_lab.coverage.child import hf_reference, run_path

    assert shrink.plan("hyperclovax").config["logits_scaling"] == shrink.LOGITS_SCALING == 2.0
    verdicts = {}
    for model_type in ("bert-generation", "hyperclovax", "gpt2"):  # the child's steps, in this process
        directory = shrink.shrunk_path(model_type)
        verdicts[model_type] = run_path("lab", directory, AutoConfig.from_pretrained(directory),
                                        hf_reference(directory))
    assert {m: v for m, (v, _) in verdicts.items()} == {"bert-generation": PASS, "hyperclovax": PASS,
                                                      "gpt2": PASS}, verdicts
