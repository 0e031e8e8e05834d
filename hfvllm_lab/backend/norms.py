"""Recognise RMSNorm variants by what they compute, and build the matching vLLM norm."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.backend.samples import float32_samples

PLAIN, OFFSET = "x*w", "x*(1+w)"


@dataclass(frozen=True)
class NormMaths:
    """How an HF norm scales: `x*w` (Llama) or `x*(1+w)` (Gemma), or neither (reason)."""

    convention: str | None
    eps: float | None
    width: int | None
    reason: str = ""


def looks_like_norm(module: nn.Module) -> bool:
    """A norm by its class name, holding no layer with parameters of its own: classes whose model name
    says "Norm" (RoBERTa-PreLayerNorm's embeddings, layers, model) are containers, walked like any other."""
    return "norm" in type(module).__name__.lower() and not any(
        True for child in module.children() for _ in child.parameters())


def norm_eps(module: nn.Module) -> float | None:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


_CACHE: dict[tuple[type, int, float], NormMaths] = {}


def classify_norm(module: nn.Module) -> NormMaths:
    """Run a CPU copy of `module` on known input and match it against both RMS conventions.

    Class names lie in both directions (some `*RMSNorm` scale by `1 + w`, some `*Norm` are
    LayerNorms), so the maths is measured rather than guessed from the name.
    """
    if isinstance(module, nn.LayerNorm):
        return NormMaths(None, None, None, "mean-centred LayerNorm, not an RMSNorm")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1:
        return NormMaths(None, None, None, "no 1-D weight to carry over")
    if getattr(module, "bias", None) is not None:
        return NormMaths(None, None, None, "has a bias, which vLLM's RMSNorm lacks")
    extra = _extra_inputs(type(module))
    if extra:
        return NormMaths(None, None, None, f"its forward takes more than the input ({', '.join(extra)}: a gated "
                                           "norm), which vLLM's RMSNorm would read as a residual")
    eps = norm_eps(module)
    if eps is None:
        return NormMaths(None, None, None, "no epsilon attribute found")
    width = weight.shape[0]
    key = (type(module), width, eps)
    if key not in _CACHE:
        with float32_samples():
            _CACHE[key] = _measure(module, width, eps)
    return _CACHE[key]


def _extra_inputs(cls: type) -> list[str]:
    """Parameters of `cls.forward` beyond `self` and the input tensor (a gate, a residual)."""
    import inspect

    params = list(inspect.signature(cls.forward).parameters.values())[2:]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _measure(module: nn.Module, width: int, eps: float) -> NormMaths:
    probe = copy.deepcopy(module).to_empty(device="cpu").float()
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(width, generator=gen, dtype=torch.float32) * 0.5
    x = torch.randn(3, width, generator=gen, dtype=torch.float32) * 3.0
    with torch.no_grad():
        probe.weight.copy_(w)
        try:
            y = probe(x)
        except Exception as exc:  # a norm that cannot run standalone is left alone
            return NormMaths(None, eps, width, f"could not be run standalone ({exc.__class__.__name__})")
    if isinstance(y, tuple):
        return NormMaths(None, eps, width, "returns a tuple (fused residual), not a plain norm")
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    for convention, expected in ((PLAIN, normed * w), (OFFSET, normed * (1.0 + w))):
        if y.shape == expected.shape and torch.allclose(y, expected, rtol=1e-4, atol=1e-5):
            return NormMaths(convention, eps, width)
    return NormMaths(None, eps, width, "computes neither x*w nor x*(1+w) RMS normalisation")


def vllm_cpu_kernel(op: str) -> tuple[bool, str]:
    """(registered?, why not) for `op` (e.g. "_C::rms_norm") with a CPU kernel in vLLM's C extension."""
    try:
        import vllm._custom_ops  # noqa: F401  (loads the _C library)

        if torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"):
            return True, ""
        return False, f"vLLM's C extension registers no CPU kernel for {op}"
    except Exception as exc:  # noqa: BLE001 - the reason is recorded by the caller
        return False, f"could not ask vLLM's C extension for {op} ({type(exc).__name__}: {exc})"[:240]


def cpu_norm_kernel_available() -> bool:
    """vLLM's CPU extension registers `_C::rms_norm` for the CPU (its IR op table does not pick it there)."""
    return vllm_cpu_kernel("_C::rms_norm")[0]


def build_vllm_norm(maths: NormMaths, *, cpu_kernel: bool = False) -> nn.Module:
    from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

    if maths.convention == PLAIN:
        if cpu_kernel:
            return _kernel_norm_class()(maths.width, eps=maths.eps)
        return RMSNorm(maths.width, eps=maths.eps)
    if maths.convention == OFFSET:
        return GemmaRMSNorm(maths.width, eps=maths.eps)
    raise ValueError(f"no vLLM norm for {maths}")


_KERNEL_NORM: type | None = None


def uses_cpu_kernel(norm: nn.Module) -> bool:
    """Whether `norm` is the lab's KernelRMSNorm (its eager CPU forward is one `_C.rms_norm`)."""
    return _KERNEL_NORM is not None and isinstance(norm, _KERNEL_NORM)


def _kernel_norm_class() -> type:
    """`KernelRMSNorm`: vLLM's RMSNorm whose eager CPU forward is one `_C.rms_norm` call.

    vLLM 0.32 runs RMSNorm on the CPU as seven Python-dispatched torch ops through its IR op
    table (the C kernel is registered for CUDA-alike devices only): ~46 us per call at 8 tokens
    on 2 cores against ~7 us for the C kernel. Only `forward_cpu` changes, which vLLM's CustomOp
    dispatch calls in eager mode; compiled mode still traces `forward_native`, which Inductor
    fuses with its neighbours. Built lazily so importing this module does not import vLLM.
    """
    global _KERNEL_NORM
    if _KERNEL_NORM is None:
        from vllm.model_executor.layers.layernorm import RMSNorm

        class KernelRMSNorm(RMSNorm):
            def forward_cpu(self, x: torch.Tensor, residual: torch.Tensor | None = None):
                weight = self.weight.data
                if (residual is not None or self.variance_size_override is not None
                        or weight.dtype != x.dtype or torch.compiler.is_compiling()):
                    return self.forward_native(x, residual)
                x = x.contiguous()  # the kernel reads rows of `hidden_size` packed elements
                out = torch.empty_like(x)
                torch.ops._C.rms_norm(out, x, weight, self.variance_epsilon)
                return out

        _KERNEL_NORM = KernelRMSNorm
    return _KERNEL_NORM
