"""Norms are classified by the maths they compute, not by their class names."""

import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from hfvllm_lab.backend.norms import OFFSET, PLAIN, classify_norm


def on_meta(factory):
    with torch.device("meta"):
        return factory()


def test_llama_and_qwen3_scale_by_weight():
    assert classify_norm(on_meta(lambda: LlamaRMSNorm(64, eps=1e-5))).convention == PLAIN
    maths = classify_norm(on_meta(lambda: Qwen3RMSNorm(32, eps=1e-6)))
    assert (maths.convention, maths.width, maths.eps) == (PLAIN, 32, 1e-6)


def test_gemma_scales_by_one_plus_weight():
    assert classify_norm(on_meta(lambda: GemmaRMSNorm(64))).convention == OFFSET


def test_layernorm_and_unknown_maths_are_left_alone_with_a_reason():
    assert "LayerNorm" in classify_norm(nn.LayerNorm(8)).reason

    class WeirdNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))
            self.eps = 1e-6

        def forward(self, x):
            return x * self.weight * 2

    maths = classify_norm(WeirdNorm())
    assert maths.convention is None and "neither" in maths.reason
