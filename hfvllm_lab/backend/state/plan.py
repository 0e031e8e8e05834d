"""Planning a model's state slots, attaching them, and what vLLM asks the model class about them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.backend.state.hf_cache import fresh_cache, model_cache_class
from hfvllm_lab.backend.state.layout import STATE_ATTR, StateLayout
from hfvllm_lab.backend.state.probe import find_stateful, probe_layout
from hfvllm_lab.backend.state.slot import state_slot_class
from hfvllm_lab.errors import UnsupportedModelError

@dataclass(frozen=True)
class StatePlan:
    """One stateful module and the state it keeps."""

    name: str
    layer_idx: int
    layout: StateLayout
    previous: dict  # the HF cache's has_previous_state flags after a prefill, restored with the state
    cache_class: type | None = None  # the model's own cache class, where its modelling module has one


# model path -> the layout its stateful modules share, set by the build in this process; vLLM asks
# the model class for it (classmethods below) right after the model is built.
_LAYOUTS: dict[str, StateLayout] = {}


def plan_state(hf: nn.Module, text_config, dtype: torch.dtype, tp_size: int) -> list[StatePlan]:
    """Probe every stateful module (one sample run per distinct module class and shapes)."""
    found = find_stateful(hf)
    if found and tp_size > 1:
        raise UnsupportedModelError(_tensor_parallel_reason(found[0][0], found[0][1], tp_size))
    probed: dict = {}
    plans = []
    cache_class = model_cache_class(hf)
    layout_of = getattr(fresh_cache(text_config, cache_class), "layers", []) if found else []
    for name, module, argument in found:
        layer = layout_of[module.layer_idx] if isinstance(getattr(module, "layer_idx", None), int) and \
            module.layer_idx < len(layout_of) else None
        if hasattr(layer, "update_indexer"):
            raise UnsupportedModelError(
                f"{name} ({type(module).__name__}) is a sparse-attention indexer: it keeps a key cache of its own "
                f"({type(layer).__name__}) and picks the keys each query may attend to through an attention mask; "
                "vLLM's paged attention attends to every cached key (vLLM runs sparse attention only with its own "
                "kernels, not on this CPU), so the lab cannot route this attention")
        key = (type(module), tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))
        if key not in probed:
            probed[key] = probe_layout(hf, text_config, name, module, argument, dtype, cache_class)
        layout, previous = probed[key]
        if layout is not None:
            plans.append(StatePlan(name, module.layer_idx, layout, previous, cache_class))
    shapes = {tuple((t.shape, t.dtype) for t in p.layout.tensors) for p in plans}
    if len(shapes) > 1:
        kinds = sorted({f"{p.layout.module_class}: {p.layout.describe()}" for p in plans})
        raise UnsupportedModelError(
            "the model's stateful modules keep differently shaped states (" + "; ".join(kinds) + "); the lab "
            "gives vLLM one state layout per model")
    return plans


def attach_state(hf: nn.Module, plans: list[StatePlan], text_config, vllm_config, root: str, model_key: str):
    """A LabStateSlot on every stateful module; their ReplacementRecords."""
    from hfvllm_lab.backend.records import ROUTED, STATE, ReplacementRecord

    cls = state_slot_class()
    records = []
    for plan in plans:
        module = hf.get_submodule(plan.name)
        slot = cls(plan.layout, plan.previous, module, plan.name, plan.layer_idx, text_config,
                   f"{root}.{plan.name}.{STATE_ATTR}", vllm_config, plan.cache_class)
        setattr(module, STATE_ATTR, slot)
        records.append(ReplacementRecord(
            plan.name, STATE, ROUTED, plan.layout.module_class, type(slot).__name__, (), 0,
            f"runs as HF code; its state in vLLM's state cache, one slot per request: {plan.layout.describe()}"))
    if plans:
        _LAYOUTS[model_key] = plans[0].layout
    return records


def registered_layout(vllm_config) -> StateLayout:
    key = vllm_config.model_config.model
    if key not in _LAYOUTS:
        raise UnsupportedModelError(
            f"vLLM asked for the state layout of {key} before the lab built it in this process")
    return _LAYOUTS[key]


def state_copy_funcs() -> tuple:
    """vLLM's prefix-cache copy specs for the layout built last in this process: each state copied whole."""
    from vllm.model_executor.layers.mamba.mamba_utils import get_temporal_copy_spec

    layout = next(reversed(_LAYOUTS.values()), None)
    return tuple(get_temporal_copy_spec for _ in (layout.tensors if layout else ()))


def _tensor_parallel_reason(name: str, module: nn.Module, tp_size: int, pp_size: int = 1) -> str:
    if pp_size > 1:
        return (f"{name} ({type(module).__name__}) keeps state between tokens and runs as HF code with its state "
                "in one slot per request; the lab does not split stateful models across pipeline ranks "
                f"(pipeline_parallel_size={pp_size}): use 1")
    return (f"{name} ({type(module).__name__}) keeps state between tokens and runs as HF code, whole, with its "
            "state in one slot per request; the lab does not split a stateful module's projections or its state "
            f"across tensor-parallel ranks (tensor_parallel_size={tp_size}): use 1")


def refuse_tensor_parallel(model_dir, config, trust_remote_code: bool, tp_size: int, pp_size: int = 1) -> None:
    """Raised before any engine starts (preflight), naming the first stateful module."""
    from hfvllm_lab.backend.model import transformers_own_config

    hf = _meta_model(transformers_own_config(config, str(model_dir)), trust_remote_code)
    name, module, _ = find_stateful(hf)[0]
    raise UnsupportedModelError(_tensor_parallel_reason(name, module, tp_size, pp_size))


def _meta_model(config, trust_remote_code: bool) -> nn.Module:
    from hfvllm_lab.backend.meta import parameters_on_meta
    from hfvllm_lab.backend.model import hf_causal_lm_class

    cls = hf_causal_lm_class(config, trust_remote_code)
    with parameters_on_meta():
        return cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)


_KEEPS_STATE: dict[tuple[str, bool], bool] = {}


def model_keeps_state(model_dir, config, trust_remote_code: bool) -> bool:
    """Whether the model's HF modules keep state outside attention (its HF model built on meta)."""
    key = (str(model_dir), trust_remote_code)
    if key not in _KEEPS_STATE:
        from hfvllm_lab.backend.model import transformers_own_config

        try:  # vLLM parses some model types with config classes of its own; transformers' code wants its own
            hf = _meta_model(transformers_own_config(config, str(model_dir)), trust_remote_code)
        except Exception:  # noqa: BLE001 - the engine's own build reports why it cannot be built
            return False
        _KEEPS_STATE[key] = bool(find_stateful(hf))
    return _KEEPS_STATE[key]
