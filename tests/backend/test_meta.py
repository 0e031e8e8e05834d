"""Meta-device construction: parameters on meta, buffers real, materialization by dtype."""

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from hfvllm_lab import zoo
from hfvllm_lab.backend.meta import buffer_bytes, materialize, parameter_bytes, parameters_on_meta


def test_hf_model_built_inside_holds_no_parameter_bytes_but_real_buffers():
    config = AutoConfig.from_pretrained(zoo.path("qwen3"))
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config)
    real, meta = parameter_bytes(model)
    assert real == 0 and meta == sum(p.numel() * 4 for p in model.parameters())
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.device.type == "cpu" and torch.isfinite(inv_freq).all() and inv_freq[0] == 1.0
    assert buffer_bytes(model) > 0
    assert nn.Linear(2, 2).weight.device.type == "cpu"  # the patch is gone after the context


def test_materialize_uses_the_engine_dtype_except_strict_fp32_parameters():
    with parameters_on_meta():
        module = nn.Module()
        module.proj = nn.Linear(4, 4)
        module.proj.e_score_correction_bias = nn.Parameter(torch.zeros(4))
    kept = materialize(module, torch.device("cpu"), torch.bfloat16, ("e_score_correction_bias",))
    assert kept == ["proj.e_score_correction_bias"]
    assert module.proj.weight.dtype == torch.bfloat16 and module.proj.weight.device.type == "cpu"
    assert module.proj.e_score_correction_bias.dtype == torch.float32
    assert parameter_bytes(module)[1] == 0
