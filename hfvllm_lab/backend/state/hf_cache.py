"""The HF cache a stateful module reads and writes: built empty, filled with one batch of requests'
states, read back; and the module's own forward run on a slice of vLLM's flattened row."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hfvllm_lab.backend.state.layout import MASK_ARGUMENTS, StateLayout
from hfvllm_lab.errors import UnsupportedModelError


def model_cache_class(hf: nn.Module) -> type | None:
    """The cache class the model's own modelling module defines (MiniMax's MiniMaxCache keeps its
    linear-attention state in a list of its own), or None for transformers' DynamicCache."""
    import sys

    from transformers.cache_utils import Cache

    module = sys.modules.get(type(hf).__module__)
    own = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Cache)
           and c.__module__ == module.__name__] if module else []
    return own[0] if len(own) == 1 else None


def fresh_cache(text_config, cache_class: type | None = None):
    """An empty HF cache laid out for this model, as transformers builds it for generate()."""
    from transformers import DynamicCache

    if cache_class is None:
        return DynamicCache(config=text_config)
    takes_config = "config" in inspect.signature(cache_class.__init__).parameters
    return cache_class(config=text_config) if takes_config else cache_class()


def _layer(cache, layer_idx: int):
    return cache.layers[layer_idx] if layer_idx < len(getattr(cache, "layers", ())) else None


def check_fixed_size(cache, layer_idx: int, where: str) -> None:
    """Refuse a module that wrote per-token keys into the HF cache (state growing with the sequence)."""
    layer = _layer(cache, layer_idx)
    keys = getattr(layer, "keys", None)
    if isinstance(keys, torch.Tensor) and keys.numel():
        raise UnsupportedModelError(
            f"{where} writes per-token keys into the HF cache ({type(layer).__name__}), a cache that grows with "
            "the sequence like attention's; vLLM's state cache holds one fixed-size slot per request, and its "
            "paged KV cache holds only attention")


def read_states(cache, layer_idx: int) -> dict[tuple[str, int], torch.Tensor]:
    """The states a module keeps at `layer_idx`: transformers' linear-attention layer's conv and
    recurrent states, and any per-layer list the cache class keeps of its own (kind = its name)."""
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    out = {}
    layer = _layer(cache, layer_idx)
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        for i, t in layer.conv_states.items():
            if layer.is_conv_states_initialized[i]:
                out[("conv", i)] = t
        for i, t in layer.recurrent_states.items():
            if layer.is_recurrent_states_initialized[i]:
                out[("recurrent", i)] = t
    for name, value in vars(cache).items():
        if name != "layers" and isinstance(value, list) and len(value) > layer_idx \
                and isinstance(value[layer_idx], torch.Tensor):
            out[(name, 0)] = value[layer_idx]
    return out


def previous_flags(cache, layer_idx: int) -> dict[int, bool]:
    return dict(getattr(_layer(cache, layer_idx), "has_previous_state", {}) or {})


def load_states(cache, layer_idx: int, layout: StateLayout, tensors: list[torch.Tensor],
                previous: dict[int, bool]) -> None:
    """Put per-request states into an HF cache as if the module had written them itself."""
    layer = _layer(cache, layer_idx)
    for spec, t in zip(layout.tensors, tensors):
        if spec.kind == "conv":
            layer.conv_states[spec.index] = t
            layer.is_conv_states_initialized[spec.index] = True
            layer.conv_kernel_size[spec.index] = t.shape[-1]
        elif spec.kind == "recurrent":
            layer.recurrent_states[spec.index] = t
            layer.is_recurrent_states_initialized[spec.index] = True
        else:  # a list of the cache class's own, one entry per layer
            entries = getattr(cache, spec.kind)
            entries.extend([] for _ in range(len(entries), layer_idx + 1))
            entries[layer_idx] = t
            continue
        layer.device, layer.dtype = t.device, t.dtype
    if layer is not None and hasattr(layer, "has_previous_state"):
        layer.has_previous_state.update(previous)


def _map_tokens(value, tokens: int, fn):
    """Apply fn to every tensor laid out [1, tokens, ...] (vLLM's flattened row as HF's batch of one)."""
    if isinstance(value, torch.Tensor):
        return fn(value) if value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == tokens else value
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tokens(v, tokens, fn) for v in value)
    return value


def call_module(forward, signature, args, kwargs, cache_argument: str, cache, tokens: int, fn):
    """Run the module's own forward on a slice of the row, with `cache` as its HF cache."""
    bound = signature.bind(*args, **kwargs)
    call = {}
    for key, value in bound.arguments.items():
        param = signature.parameters[key]
        if key in MASK_ARGUMENTS:
            value = None
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            value = {k: (None if k in MASK_ARGUMENTS else _map_tokens(v, tokens, fn)) for k, v in value.items()}
        else:
            value = _map_tokens(value, tokens, fn)
        call[key] = value
    call[cache_argument] = cache
    bound.arguments.clear()
    bound.arguments.update(call)
    return forward(*bound.args, **bound.kwargs)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    return None


def join_tokens(pieces: list, total: int):
    """Concatenate per-request outputs ([1, n, ...] each) back into one row; padding rows as zeros."""
    first = pieces[0]
    if isinstance(first, torch.Tensor):
        row = torch.cat(pieces, dim=1) if len(pieces) > 1 else first
        if row.shape[1] < total:
            row = torch.cat([row, row.new_zeros(row.shape[0], total - row.shape[1], *row.shape[2:])], dim=1)
        return row
    if isinstance(first, (tuple, list)):
        # an element is per token when the pieces' dim-1 sizes add up to the row (the others, e.g. a
        # returned state, come from the first piece)
        lead = _first_tensor(first)
        counts = [_first_tensor(p).shape[1] for p in pieces]
        return type(first)(
            join_tokens([p[i] for p in pieces], total)
            if isinstance(first[i], torch.Tensor) and first[i].dim() >= 2 and first[i] is not None
            and [p[i].shape[1] for p in pieces] == counts and lead is not None else first[i]
            for i in range(len(first)))
    return first


def _as_row(out):
    """A decode batch's output [n, 1, ...] as one row [1, n, ...]."""
    if isinstance(out, torch.Tensor):
        return out.transpose(0, 1) if out.dim() >= 2 else out
    if isinstance(out, (tuple, list)):
        return type(out)(_as_row(o) for o in out)
    return out
