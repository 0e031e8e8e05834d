"""Eager CPU steps rotate q/k with vLLM's `_C.rotary_embedding` kernel, decided on a sample.

transformers applies rotary embeddings as a dozen elementwise ops per layer (slice, neg, cat,
mul, add for q and again for k); vLLM's own model classes make one kernel call. The lab keeps
the HF forward and the HF position tables, and swaps only the rotation:

- a forward hook on the model's rotary module remembers the (cos, sin) it returned this step and
  packs them once per step into the kernel's table (one row per token: cos and sin halves);
- the attention module's modeling file gets a dispatching `apply_rotary_pos_emb`: given exactly
  those cos/sin tensors (checked by identity), it rotates q and k in place with the kernel;
  given anything else (the HF-native path in the same process, a model this was not checked
  for, a traced compiled step) it calls transformers' original function.

It is used only where a CPU copy of the attention module, run at non-zero positions, gives the
attention call the same q/k/v both ways; otherwise the record says why it stays HF.
"""

from __future__ import annotations

import inspect
import sys
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.backend.samples import call_attention, cpu_copy, float32_samples

FUNCTION = "apply_rotary_pos_emb"


@dataclass
class _Step:
    """One step's HF position tables and the kernel's view of them."""

    cos: torch.Tensor
    sin: torch.Tensor
    table: torch.Tensor  # [tokens, head size]: cos half then sin half, row t for token t
    positions: torch.Tensor  # arange(tokens): row indices into `table`
    calls: int = 0  # apply calls the kernel served (read by the sample check)


_STEPS: OrderedDict[int, _Step] = OrderedDict()  # id(cos) -> step; a model may hold two rotary modules
_KEEP = 4


def remember_tables(module: nn.Module, args, output) -> None:
    """Forward hook on the HF rotary module: pack this step's cos/sin for the kernel."""
    if torch.compiler.is_compiling() or not (isinstance(output, tuple) and len(output) == 2):
        return
    cos, sin = output
    if not (isinstance(cos, torch.Tensor) and cos.dim() == 3 and cos.shape[0] == 1 and cos.shape == sin.shape):
        return
    half = cos.shape[-1] // 2
    step = _Step(cos, sin, torch.cat((cos[0, :, :half], sin[0, :, :half]), dim=-1),
                 torch.arange(cos.shape[1], device=cos.device))
    _STEPS[id(cos)] = step
    while len(_STEPS) > _KEEP:
        _STEPS.popitem(last=False)


def forget_tables() -> None:
    _STEPS.clear()


def _token_rows(x: torch.Tensor, heads_first: bool) -> torch.Tensor | None:
    """[tokens, heads * head size] view of q or k ([1, heads, tokens, D] or [1, tokens, heads, D])."""
    t = x.transpose(1, 2) if heads_first else x
    if t.dim() != 4 or t.shape[0] != 1 or t.stride(-1) != 1 or t.stride(-2) != t.shape[-1]:
        return None
    return t[0].view(t.shape[1], t.shape[2] * t.shape[3])


def dispatching(original):
    """`apply_rotary_pos_emb` that hands remembered tables to the kernel, and all else to `original`."""
    default_unsqueeze = inspect.signature(original).parameters["unsqueeze_dim"].default

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=default_unsqueeze):
        step = None if torch.compiler.is_compiling() else _STEPS.get(id(cos))
        if step is None or step.cos is not cos or step.sin is not sin or unsqueeze_dim not in (1, 2) \
                or q.dtype != step.table.dtype or k.dtype != q.dtype or q.shape[-1] != cos.shape[-1]:
            return original(q, k, cos, sin, unsqueeze_dim)
        q_rows, k_rows = _token_rows(q, unsqueeze_dim == 1), _token_rows(k, unsqueeze_dim == 1)
        if q_rows is None or k_rows is None or q_rows.shape[0] != step.positions.shape[0]:
            return original(q, k, cos, sin, unsqueeze_dim)
        torch.ops._C.rotary_embedding(step.positions, q_rows, k_rows, q.shape[-1], step.table, True)
        step.calls += 1
        return q, k  # rotated in place, in the caller's layout

    apply_rotary_pos_emb.lab_original = original
    apply_rotary_pos_emb.__doc__ = original.__doc__
    return apply_rotary_pos_emb


def kernel_available(device_type: str) -> tuple[bool, str]:
    """(vLLM's `_C.rotary_embedding` serves this device?, why not)."""
    from hfvllm_lab.backend.norms import vllm_cpu_kernel

    if device_type != "cpu":
        return False, f"vLLM has no _C.rotary_embedding kernel for {device_type}"
    return vllm_cpu_kernel("_C::rotary_embedding")


@dataclass(frozen=True)
class RopePlan:
    engaged: bool
    reason: str


_CHECKED: dict[tuple, str] = {}  # (attention class, shapes) -> "" when the kernel path matched, else why not


def plan_rope(attention_modules: dict[str, nn.Module], rotaries: list[nn.Module], device_type: str) -> RopePlan:
    """Check every attention class on a sample; on success install the dispatcher and the hooks."""
    rotary = rotaries[0] if rotaries else None
    if rotary is None:
        return RopePlan(False, "no rotary module")
    available, why_not = kernel_available(device_type)
    if not available:
        return RopePlan(False, why_not)
    if not attention_modules:
        return RopePlan(False, "no attention module dispatches through transformers' interface")
    samples: dict[type, nn.Module] = {}
    for module in attention_modules.values():
        samples.setdefault(type(module), module)
    for cls, module in samples.items():
        files = sys.modules.get(cls.__module__)
        current = getattr(files, FUNCTION, None)
        original = getattr(current, "lab_original", current)
        if FUNCTION not in inspect.unwrap(cls.forward).__code__.co_names or original is None:
            return RopePlan(False, f"{cls.__name__} does not call {FUNCTION}")
        params = list(inspect.signature(original).parameters)
        if params != ["q", "k", "cos", "sin", "unsqueeze_dim"]:
            return RopePlan(False, f"{cls.__module__}.{FUNCTION} takes ({', '.join(params)})")
        if current is original:  # installed once per modeling file; it serves only hooked tables
            setattr(files, FUNCTION, dispatching(original))
        key = (cls, tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))
        if key not in _CHECKED:
            _CHECKED[key] = _check_on_sample(module, rotary)
        if _CHECKED[key]:
            setattr(files, FUNCTION, current)  # as it was: another live model may use the dispatcher
            return RopePlan(False, _CHECKED[key])
    for module in rotaries:
        module.register_forward_hook(remember_tables)
    names = sorted({f"{c.__module__.rsplit('.', 1)[-1]}.{FUNCTION}" for c in samples})
    return RopePlan(True, f"eager CPU steps rotate q/k with vLLM's _C.rotary_embedding ({', '.join(names)} "
                          "dispatches for this model's tables; checked on a sample)")


RUN_KEY = "hfvllm_lab_rope_check"  # transformers attention key used on the sample copy only


def _sample_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Plain causal softmax attention ([1, heads, T, D] in, [1, T, heads, D] out) for the check."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ value).transpose(1, 2).contiguous(), None


def _check_on_sample(module: nn.Module, rotary: nn.Module) -> str:
    """'' when the attention module's output matches with and without the kernel path, and the
    kernel served exactly one call: later uses of q/k (the kernel rotates them in place) show too."""
    with float32_samples():  # vLLM may be building in bf16 (torch's default dtype meanwhile)
        return _run_sample(module, rotary)


def _run_sample(module: nn.Module, rotary: nn.Module) -> str:
    import copy

    from transformers import AttentionInterface

    AttentionInterface.register(RUN_KEY, _sample_attention)
    probe = cpu_copy(module, seed=31)
    config = getattr(probe, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return "no config to point at a sample attention"
    config._attn_implementation = RUN_KEY
    rot = copy.deepcopy(rotary).float()
    width = getattr(config, "hidden_size", None)
    if not isinstance(width, int):
        return "no hidden_size to build a sample"
    x = torch.randn(1, 5, width, generator=torch.Generator().manual_seed(32))
    positions = torch.tensor([[3, 9, 17, 40, 41]])
    mine: list[_Step] = []  # the sample's own tables (a live model in this process keeps its own)

    def remember_sample(module, args, output) -> None:
        remember_tables(module, args, output)
        step = _STEPS.get(id(output[0])) if isinstance(output, tuple) and output else None
        if step is not None:
            mine.append(step)

    notes: list[str] = []
    try:
        with torch.no_grad():
            hf = call_attention(probe, x, rot, positions=positions, capture=False, notes=notes)  # HF ops
            if notes:  # identity tables would make the check pass without testing a rotation
                return f"could not be checked on a sample: {notes[0]}"
            handle = rot.register_forward_hook(remember_sample)
            try:
                lab = call_attention(probe, x, rot, positions=positions, capture=False)  # same tables, remembered
            finally:
                handle.remove()
        engaged = sum(step.calls for step in mine)
    except Exception as exc:
        return f"could not be checked on a sample ({type(exc).__name__}: {exc})"[:200]
    finally:
        for step in mine:
            if _STEPS.get(id(step.cos)) is step:
                del _STEPS[id(step.cos)]
    if engaged != 1:
        return (f"the attention forward made {engaged} kernel-eligible {FUNCTION} calls on a sample "
                "(expected 1 with the rotary module's own tables): rotary stays HF")
    a, b = (o[0] if isinstance(o, tuple) else o for o in (hf, lab))
    if not (isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)):
        return "the kernel's rotation changes the attention module's output on a sample: rotary stays HF"
    return ""
