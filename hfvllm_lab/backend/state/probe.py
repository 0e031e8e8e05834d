"""Which modules keep state between tokens, and what: found from what each writes into a fresh HF
cache when a CPU copy of its decoder layer runs on sample rows."""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from hfvllm_lab.backend.state.hf_cache import (
    _first_tensor,
    call_module,
    check_fixed_size,
    fresh_cache,
    previous_flags,
    read_states,
)
from hfvllm_lab.backend.state.layout import (
    CACHE_ARGUMENTS,
    MASK_ARGUMENTS,
    StateLayout,
    StateTensor,
)
from hfvllm_lab.errors import UnsupportedModelError, first_line


def _attention_holders(hf: nn.Module) -> set[str]:
    from hfvllm_lab.backend.attention import dispatches_through_interface

    return {name for name, module in hf.named_modules()
            if any(dispatches_through_interface(type(m)) for m in module.modules())}


def _cache_argument(module: nn.Module) -> str | None:
    if type(module).forward is nn.Module.forward:
        return None
    params = inspect.signature(type(module).forward).parameters
    return next((a for a in CACHE_ARGUMENTS if a in params), None)


def find_stateful(hf: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, cache argument) of the innermost modules that take the HF cache outside
    attention: the modules that read and write state between tokens. Modules that hand the cache
    down (to attention, or to one of these) are not listed; a stateful submodule of an attention
    module (a short convolution on the keys) is."""
    holders = _attention_holders(hf)
    takers = {name: (module, arg) for name, module in hf.named_modules()
              if name and name not in holders and (arg := _cache_argument(module))}
    return [(name, module, arg) for name, (module, arg) in takers.items()
            if not any(other.startswith(name + ".") for other in takers)]


def _decoder_layer(hf: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The outermost module below a ModuleList that holds `name` (its decoder layer)."""
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        parent = hf.get_submodule(".".join(parts[:depth - 1])) if depth > 1 else hf
        if isinstance(parent, nn.ModuleList):
            return ".".join(parts[:depth]), hf.get_submodule(".".join(parts[:depth]))
    raise UnsupportedModelError(f"{name} takes the HF cache outside attention but is not inside a decoder layer list")


def _sample_copy(module: nn.Module) -> nn.Module:
    """A CPU copy of a meta module with small seeded weights (only shapes and dtypes are read)."""
    clone = copy.deepcopy(module).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in clone.parameters():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(p.dtype))
            else:
                p.zero_()
        real = {n: b for n, b in module.named_buffers() if b.device.type != "meta"}
        for n, b in clone.named_buffers():
            b.copy_(real[n]) if n in real else b.zero_()  # rotary tables and such keep their values
    return clone


def _rotary(hf: nn.Module):
    base = getattr(hf, hf.base_model_prefix, hf)
    return next((m for n, m in base.named_children() if "rotary" in n), None)


class _Reached(Exception):
    """Stops a meta forward at the decoder layer whose inputs it was run for."""


def _layer_inputs_on_meta(hf: nn.Module, decoder: nn.Module, batch: int, tokens: int):
    """(args, kwargs) the base model hands `decoder`, from a forward on the meta model stopped there
    (their shapes and dtypes: hidden widths a model widens, position tables, ...); None if the meta
    forward cannot get that far."""
    base = getattr(hf, hf.base_model_prefix, hf)
    got: list = []

    def stop(module, args, kwargs):
        got.append((args, kwargs))
        raise _Reached

    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    config = getattr(base, "config", None)
    kinds = {"full_attention", "sliding_attention", *(getattr(config, "layer_types", None) or ())}
    # building a mask reads values (.item()), which meta tensors have none of: models that take ready
    # masks per layer type skip it, so try that first
    attempts = ({"attention_mask": dict.fromkeys(kinds)}, {})
    handle = decoder.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for extra in attempts:
            try:
                with torch.no_grad():
                    base(input_ids=ids, use_cache=False, **extra)
            except _Reached:
                break
            except Exception:  # noqa: BLE001 - the caller falls back to plain [batch, tokens, hidden] inputs
                continue
    finally:
        handle.remove()
    return got[0] if got else None


def _realize(value, gen: torch.Generator, dtype: torch.dtype):
    """Meta tensors as CPU tensors of the same shape: small noise where floating, zeros elsewhere."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            return value
        if value.is_floating_point():
            return torch.randn(value.shape, generator=gen).to(value.dtype)
        return torch.zeros(value.shape, dtype=value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_realize(v, gen, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _realize(v, gen, dtype) for k, v in value.items()}
    return value


def probe_layout(hf: nn.Module, text_config, name: str, module: nn.Module, cache_argument: str,
                 dtype: torch.dtype, cache_class: type | None = None) -> tuple[StateLayout | None, dict[int, bool]]:
    """Run a CPU copy of the module's decoder layer on sample rows (batch 1 x 3 tokens, then 2 x 6)
    and read what the module wrote into a fresh HF cache: which states, their per-request shapes
    and dtypes (the batch axis first, the same size for any length), and the flags the module
    leaves set; no layout when it wrote none. A module whose state grows with the sequence, or that the
    copy cannot run, is refused."""
    layer_idx = getattr(module, "layer_idx", None)
    if not isinstance(layer_idx, int):
        raise UnsupportedModelError(f"{name} ({type(module).__name__}) takes the HF cache but names no layer_idx")
    layer_name, decoder = _decoder_layer(hf, name)
    clone = _sample_copy(decoder)
    target = clone.get_submodule(name[len(layer_name) + 1:]) if name != layer_name else clone
    forward = type(target).forward.__get__(target)
    signature = inspect.signature(forward)
    seen: list = []

    def probing(*args, **kwargs):
        cache = fresh_cache(text_config, cache_class)
        out = call_module(forward, signature, args, kwargs, cache_argument, cache, -1, lambda t: t)
        seen.append((cache, out))
        return out

    target.forward = probing
    rotary = _rotary(hf)
    rotary = _sample_copy(rotary) if rotary is not None else None
    params = inspect.signature(type(clone).forward).parameters
    configs = {id(c): c for c in [text_config, getattr(hf, "config", None),
                                  *(getattr(m, "config", None) for m in clone.modules())]
               if c is not None and hasattr(c, "_attn_implementation")}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    runs = []
    try:
        for c in configs.values():  # the copy's own attention, if the layer has one, runs as sdpa
            c._attn_implementation = "sdpa"
        for batch, tokens in ((1, 3), (2, 6)):
            seen.clear()
            gen = torch.Generator().manual_seed(batch)
            captured = _layer_inputs_on_meta(hf, decoder, batch, tokens)
            if captured is not None:  # what the base model really hands this layer (shapes; values made up)
                args = _realize(captured[0], gen, dtype)
                kwargs = {k: (None if k in MASK_ARGUMENTS or k in CACHE_ARGUMENTS else _realize(v, gen, dtype))
                          for k, v in captured[1].items()}
                kwargs["use_cache"] = False if "use_cache" in kwargs else kwargs.get("use_cache")
                kwargs = {k: v for k, v in kwargs.items() if not (k == "use_cache" and v is None)}
            else:
                x = torch.randn(batch, tokens, text_config.hidden_size, generator=gen).to(dtype)
                pos = torch.arange(tokens)[None].expand(batch, tokens)
                kwargs = {"position_ids": pos, "attention_mask": None, "use_cache": False}
                if "position_embeddings" in params and rotary is not None:
                    extra = {}
                    if "layer_type" in inspect.signature(type(rotary).forward).parameters:  # per-layer-type tables
                        types = getattr(text_config, "layer_types", None) or [None] * (layer_idx + 1)
                        extra["layer_type"] = types[layer_idx]
                    kwargs["position_embeddings"] = rotary(x, pos, **extra)
                kwargs = {k: v for k, v in kwargs.items() if k in params or any(
                    p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())}
                args = (x,)
            with torch.no_grad():
                clone(*args, **kwargs)
            if not seen:
                raise UnsupportedModelError(f"{name} was not called when its decoder layer ran on a sample")
            cache, out = seen[-1]
            check_fixed_size(cache, layer_idx, f"{name} ({type(module).__name__})")
            first = _first_tensor(out)
            if first is None or first.dim() < 2 or tuple(first.shape[:2]) != (batch, tokens):
                raise UnsupportedModelError(
                    f"{name} ({type(module).__name__}) returns {None if first is None else tuple(first.shape)} for "
                    f"{batch} x {tokens} tokens: not laid out [batch, tokens, ...], so its rows cannot be split "
                    "per request")
            runs.append((read_states(cache, layer_idx), previous_flags(cache, layer_idx)))
    except UnsupportedModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the sample run is the refusal's reason
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) keeps state between tokens, and running a copy of its layer on a "
            f"sample to find that state failed: {type(exc).__name__}: {first_line(exc, 200)}") from exc
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
    (one, flags), (two, _) = runs
    if not one and not two:
        return None, {}  # it hands the cache on to nothing that keeps state (a block around an MLP)
    if set(one) != set(two):
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) wrote different states for 3 tokens ({sorted(one)}) and for "
            f"2 x 6 ({sorted(two)})")
    tensors = []
    for (kind, index) in sorted(one):
        a, b = one[(kind, index)], two[(kind, index)]
        if a.shape[0] != 1 or b.shape[0] != 2 or a.shape[1:] != b.shape[1:]:
            raise UnsupportedModelError(
                f"{name} ({type(module).__name__}): its {kind} state {index} is {tuple(a.shape)} after 3 tokens and "
                f"{tuple(b.shape)} after 2 x 6: not a fixed-size state per request (batch axis first)")
        tensors.append(StateTensor(kind, index, tuple(a.shape[1:]), str(a.dtype).removeprefix("torch.")))
    return StateLayout(type(module).__name__, cache_argument, tuple(tensors)), flags
