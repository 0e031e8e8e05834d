"""Sample checks: a module's CPU float32 copy with random weights, run on a small input, tells
what the module computes (which Linear feeds q, k or v; whether an MLP is gated; whether a
rotation matches vLLM's kernel) without touching the model being built."""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator

import torch
from torch import nn


def looks_like_rotary(module: nn.Module) -> bool:
    """HF's rotary position modules (LlamaRotaryEmbedding, ...); only ever a hint, checks follow."""
    return "rotary" in type(module).__name__.lower()


class Captured(Exception):
    def __init__(self, query, key, value) -> None:
        self.qkv = (query, key, value)


def probe_attention(module, query, key, value, *args, **kwargs):
    raise Captured(query.detach().clone(), key.detach().clone(), value.detach().clone())


@contextlib.contextmanager
def float32_samples() -> Iterator[None]:
    """Sample checks run in float32: vLLM builds a bf16 model with bf16 as torch's default dtype,
    and tensors a forward makes without a dtype would otherwise not match the float32 copy."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def cpu_copy(module: nn.Module, seed: int) -> nn.Module:
    probe = copy.deepcopy(module).to_empty(device="cpu").float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0))
    return probe


def call_attention(probe: nn.Module, x: torch.Tensor, rotary: nn.Module | None,
                    positions: torch.Tensor | None = None, capture: bool = True, notes: list[str] | None = None):
    """Run an attention module's forward with the probe attention; (q, k, v) the attention saw
    (or, with `capture=False` and an attention function that returns, the forward's output).
    Position 0 everywhere (rotary is the identity) unless `positions` ([1, tokens]) says otherwise.
    Where the rotary tables cannot be made (no rotary module, or it raises) identity tables stand
    in, and `notes` gets a line saying so: the caller records it."""
    tokens = x.shape[1]
    params = inspect.signature(probe.forward).parameters
    kwargs = {}
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not names:
        raise TypeError("forward takes no named hidden-states argument")
    kwargs[names[0]] = x
    pos = torch.zeros(1, tokens, dtype=torch.long) if positions is None else positions
    if "position_embeddings" in params:
        cos_sin, why = None, "no rotary module was found"
        if rotary is not None:
            try:
                cos_sin = rotary(x, pos)
            except Exception as exc:  # noqa: BLE001 - recorded through `notes`
                why = f"the rotary module {type(rotary).__name__} raised on the sample ({type(exc).__name__}: {exc})"
        if cos_sin is None:
            head = getattr(probe, "head_dim", None) or 1
            cos_sin = (torch.ones(1, tokens, head), torch.zeros(1, tokens, head))
            if notes is not None:
                notes.append(f"{why}; identity cos/sin stood in"[:240])
        kwargs["position_embeddings"] = cos_sin
    if "position_ids" in params:
        kwargs["position_ids"] = pos
    for n in names[1:]:
        p = params[n]
        if n not in kwargs and p.default is inspect.Parameter.empty:
            kwargs[n] = None
    try:
        out = probe(**kwargs)
    except Captured as done:
        return done.qkv
    if not capture:
        return out
    raise RuntimeError("the forward returned without calling the attention function")
