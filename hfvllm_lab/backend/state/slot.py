"""`LabStateSlot`: the vLLM layer (a `MambaBase`) holding one stateful module's per-request state,
and the code that runs the module's HF forward on vLLM's batches with it."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hfvllm_lab.backend.state.hf_cache import (
    _as_row,
    _first_tensor,
    call_module,
    fresh_cache,
    join_tokens,
    load_states,
    read_states,
)
from hfvllm_lab.backend.state.layout import _DTYPES, StateLayout
from hfvllm_lab.vocab import STATE_BACKEND

_SLOT_CLASS = None


def state_slot_class() -> type:
    """`LabStateSlot`, built on first use so importing this module does not import vLLM."""
    global _SLOT_CLASS
    if _SLOT_CLASS is not None:
        return _SLOT_CLASS
    from vllm.model_executor.layers.mamba.abstract import MambaBase
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    class LabStateSlot(nn.Module, MambaBase):
        """One stateful HF module's per-request state in vLLM's state cache, and the code that runs
        the module on vLLM's batches with it."""

        def __init__(self, layout: StateLayout, previous: dict[int, bool], module: nn.Module, name: str,
                     layer_idx: int, text_config, prefix: str, vllm_config, cache_class: type | None = None) -> None:
            nn.Module.__init__(self)
            self.cache_class = cache_class
            self.layout, self.previous, self.name, self.layer_idx = layout, previous, name, layer_idx
            self.text_config, self.prefix = text_config, prefix
            self.kv_cache = (torch.tensor([]),)
            # decode batches, fresh prefills, prefills resumed from a state, steps holding both decodes
            # and prefills, and rows run without scheduled requests (vLLM's profiling run)
            self.calls = {"decode": 0, "prefill": 0, "resumed": 0, "mixed": 0, "unscheduled": 0}
            self.lab_counts: dict[str, int] = {}  # forward calls since the attention probe last reset them
            forward = type(module).forward.__get__(module)
            signature = inspect.signature(forward)
            context = vllm_config.compilation_config.static_forward_context
            if prefix in context:
                raise ValueError(f"duplicate layer name {prefix}")
            context[prefix] = self
            object.__setattr__(self, "_hf_forward", forward)
            object.__setattr__(self, "_signature", signature)
            module.forward = self.run  # the module's own __call__ (hooks included) lands here

        def get_state_shape(self):
            return tuple(t.shape for t in self.layout.tensors)

        def get_state_dtype(self):
            return tuple(_DTYPES[t.dtype] for t in self.layout.tensors)

        @property
        def mamba_type(self):
            # the generic per-request metadata (state slots, prefill starts, initial-state flags)
            return MambaAttentionBackendEnum.SHORT_CONV

        # -- running -----------------------------------------------------------------------
        def _call(self, args, kwargs, cache, tokens, fn):
            return call_module(self._hf_forward, self._signature, args, kwargs, self.layout.cache_argument,
                               cache, tokens, fn)

        def _cache_with(self, states: list[torch.Tensor]):
            cache = fresh_cache(self.text_config, self.cache_class)
            load_states(cache, self.layer_idx, self.layout, states, self.previous)
            return cache

        def _store(self, cache, slots: torch.Tensor) -> None:
            got = read_states(cache, self.layer_idx)
            for spec, pages in zip(self.layout.tensors, self.kv_cache):
                new = got.get((spec.kind, spec.index))
                if new is None:  # not written this time: the slot must not keep another request's state
                    pages[slots] = 0
                else:
                    pages[slots] = new.to(pages.dtype)

        def run(self, *args, **kwargs):
            from vllm.forward_context import get_forward_context, is_forward_context_available

            self.lab_counts[STATE_BACKEND] = self.lab_counts.get(STATE_BACKEND, 0) + 1
            row = _first_tensor(args[0] if args else kwargs.get("hidden_states"))
            total = row.shape[1]
            meta = None
            if is_forward_context_available():
                metadata = get_forward_context().attn_metadata
                meta = metadata.get(self.prefix) if isinstance(metadata, dict) else None
            if meta is None:
                # no scheduled requests (vLLM's profiling run) or the row is one prompt scored on its own
                self.calls["unscheduled"] += 1
                return self._call(args, kwargs, fresh_cache(self.text_config, self.cache_class), total, lambda t: t)
            pieces = []
            decodes = int(meta.num_decode_tokens)
            self.calls["mixed"] += bool(decodes and int(meta.num_prefills))
            if decodes:
                self.calls["decode"] += 1
                slots = _slot_column(meta.state_indices_tensor_d)[:decodes]
                cache = self._cache_with([pages[slots] for pages in self.kv_cache])
                out = self._call(args, kwargs, cache, total, lambda t: t[0, :decodes].unsqueeze(1))
                self._store(cache, slots)
                pieces.append(_as_row(out))
            if int(meta.num_prefills):
                starts = meta.query_start_loc_p.tolist()
                slots = _slot_column(meta.state_indices_tensor_p)
                resumed = meta.has_initial_states_p.tolist() if meta.has_initial_states_p is not None else None
                for i in range(len(starts) - 1):
                    a, b = decodes + starts[i], decodes + starts[i + 1]
                    slot = slots[i : i + 1]
                    if resumed and resumed[i]:
                        # a prompt continuing from a stored state: HF modules take a state only in their
                        # one-token decode path, so feed its tokens one at a time
                        self.calls["resumed"] += 1
                        for t in range(a, b):
                            cache = self._cache_with([pages[slot] for pages in self.kv_cache])
                            pieces.append(self._call(args, kwargs, cache, total, lambda x, t=t: x[:, t:t + 1]))
                            self._store(cache, slot)
                        continue
                    self.calls["prefill"] += 1
                    cache = fresh_cache(self.text_config, self.cache_class)
                    pieces.append(self._call(args, kwargs, cache, total, lambda x, a=a, b=b: x[:, a:b]))
                    self._store(cache, slot)
            return join_tokens(pieces, total)

    _SLOT_CLASS = LabStateSlot
    return LabStateSlot


def _slot_column(indices: torch.Tensor) -> torch.Tensor:
    """Each request's state slot (the first column where vLLM keeps several per request)."""
    return (indices[:, 0] if indices.dim() > 1 else indices).long()
