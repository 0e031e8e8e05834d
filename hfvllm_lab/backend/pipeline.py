"""Pipeline parallel in the lab backend: which decoder layers a rank holds (transformers' own pipeline
plan names the stages), parameter-free placeholders for the rest, hidden states handed between ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.errors import UnsupportedModelError
from hfvllm_lab.vocab import ELSEWHERE, EMBEDDING, LAYER, LM_HEAD, NORM, OTHER

# The one tensor that crosses a stage boundary: HF decoder layers carry their residual inside.
HIDDEN = "hidden_states"
# Config settings under which the base model hands its decoder layers more than the hidden states: per-layer
# inputs computed from the embeddings (Gemma 3n / 4), stacked "altup" hidden states (Gemma 3n), keys and values
# one layer shares with later ones (Gemma 3n / 4).
CROSS_LAYER_INPUTS = ("hidden_size_per_layer_input", "altup_num_inputs", "num_kv_shared_layers")


def pipeline_plan(config) -> dict:
    """transformers' pipeline plan of the base model (`base_model_pp_plan` in the config): module name ->
    (inputs, outputs), in forward order. (A causal-LM class's own `_pp_plan` names only its head.)"""
    return dict(getattr(config, "base_model_pp_plan", None) or {})


def check_pipeline(config, pp_size: int, cls_name: str = "") -> None:
    """Refuse a split the backend cannot build, before any engine starts: no plan, no decoder-layer
    stage in it, more ranks than layers."""
    if pp_size <= 1:
        return
    plan = pipeline_plan(config)
    model_type = getattr(config, "model_type", "?")
    if not plan:
        raise UnsupportedModelError(
            f"pipeline_parallel_size={pp_size}: {cls_name or model_type} declares no pipeline plan in transformers "
            "(base_model_pp_plan), so which modules form its stages cannot be read; use pipeline_parallel_size=1")
    stages = [name for name, (_, outputs) in plan.items() if list(outputs) == [HIDDEN] and name.endswith("layers")]
    if not stages:
        raise UnsupportedModelError(
            f"pipeline_parallel_size={pp_size}: the pipeline plan of {model_type} ({', '.join(plan)}) names no "
            "decoder-layer list that hands on hidden states alone")
    carried = [f"{attr}={getattr(config, attr)}" for attr in CROSS_LAYER_INPUTS if getattr(config, attr, None)]
    if carried:
        raise UnsupportedModelError(
            f"pipeline_parallel_size={pp_size}: {model_type}'s decoder layers take more than the hidden states from "
            f"the base model ({', '.join(carried)}: per-layer inputs built from the embeddings, stacked hidden "
            "states or keys shared between layers), which the lab does not hand between ranks; use 1")
    layers = getattr(config, "num_hidden_layers", 0) or 0
    if pp_size > layers:
        raise UnsupportedModelError(
            f"pipeline_parallel_size={pp_size} is more ranks than {model_type}'s {layers} decoder layers: a rank "
            "would hold no layer")


@dataclass(frozen=True)
class PipelineSlice:
    """What one pipeline rank holds: decoder layers [start, end) of `num_layers`."""

    rank: int
    size: int
    start: int
    end: int
    num_layers: int

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.size - 1

    def holds(self, layer: int) -> bool:
        return self.start <= layer < self.end

    def describe(self) -> str:
        return (f"pipeline rank {self.rank} of {self.size}: decoder layers {self.start}-{self.end - 1} of "
                f"{self.num_layers}")


def current_slice(num_layers: int) -> PipelineSlice:
    """This process's slice, from vLLM's pipeline group and its layer partition (VLLM_PP_LAYER_PARTITION)."""
    from vllm.distributed import get_pp_group
    from vllm.distributed.utils import get_pp_indices

    group = get_pp_group()
    start, end = get_pp_indices(num_layers, group.rank_in_group, group.world_size)
    return PipelineSlice(group.rank_in_group, group.world_size, start, end, num_layers)


class LabMissingLayer(nn.Module):
    """Stands for a decoder layer another pipeline rank holds: no parameters, hands its hidden states on."""

    def __init__(self, held_by: int) -> None:
        super().__init__()
        self.held_by = held_by

    def forward(self, *args, **kwargs):
        return args[0] if args else kwargs[HIDDEN]


class LabMissingEmbedding(nn.Module):
    """The input embedding on a rank after the first: no parameters; zeros of the right shape, which the
    first held layer's pre-hook replaces with the hidden states received from the previous rank."""

    def __init__(self, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.hidden_size, self.dtype = hidden_size, dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.hidden_size, dtype=self.dtype, device=input_ids.device)


@dataclass
class StageLayers:
    """The base model's decoder-layer list and the modules before (embedding) and after it (norm)."""

    layers_name: str
    before: list[str]
    after: list[str]


def stage_layers(base: nn.Module, config) -> StageLayers:
    plan = pipeline_plan(config)
    names = list(plan)
    layers_name = next(n for n, (_, outputs) in plan.items() if list(outputs) == [HIDDEN] and n.endswith("layers"))
    idx = names.index(layers_name)
    known = {n for n, _ in base.named_modules()}
    missing = [n for n in names if n not in known]
    if missing:
        raise UnsupportedModelError(f"the pipeline plan names modules the built model lacks: {', '.join(missing)}")
    return StageLayers(layers_name, names[:idx], names[idx + 1:])


def cut_pipeline(hf: nn.Module, base: nn.Module, base_prefix: str, stage: StageLayers, piece: PipelineSlice,
                 head_name: str, hidden_size: int, dtype: torch.dtype) -> list:
    """Replace (on meta, before any vLLM layer is built) every module this rank does not hold with a
    parameter-free placeholder; one record per placeholder, naming the rank that holds the module."""
    from hfvllm_lab.backend.records import ReplacementRecord

    def full(name: str) -> str:
        return f"{base_prefix}.{name}" if base_prefix else name

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    records = []
    layers = base.get_submodule(stage.layers_name)
    for i in range(len(layers)):
        if piece.holds(i):
            continue
        owner = next(r for r in range(piece.size) if _slice_of(piece, r).holds(i))
        old = layers[i]
        records.append(ReplacementRecord(f"{full(stage.layers_name)}.{i}", LAYER, ELSEWHERE, type(old).__name__,
                                         LabMissingLayer.__name__, (), count(old),
                                         f"decoder layer {i} is held by pipeline rank {owner}"))
        layers[i] = LabMissingLayer(owner)
    for names, holder, keep in ((stage.before, 0, piece.first), (stage.after, piece.size - 1, piece.last)):
        if keep:
            continue
        for name in names:
            old = base.get_submodule(name)
            # an embedding's stand-in makes zeros of the hidden size from ids; anything else (dropout, a norm)
            # hands its input on
            embedding = isinstance(old, nn.Embedding)
            kind = EMBEDDING if embedding else NORM if "norm" in type(old).__name__.lower() else OTHER
            new = LabMissingEmbedding(hidden_size, dtype) if embedding else LabMissingLayer(holder)
            records.append(ReplacementRecord(full(name), kind, ELSEWHERE, type(old).__name__,
                                             type(new).__name__, (), count(old),
                                             f"held by pipeline rank {holder} ({'first' if holder == 0 else 'last'} "
                                             "stage)"))
            base.set_submodule(name, new)
    if not piece.last:
        old = hf.get_submodule(head_name)
        records.append(ReplacementRecord(head_name, LM_HEAD, ELSEWHERE, type(old).__name__, LabMissingLayer.__name__,
                                         tuple(old.weight.shape), count(old),
                                         f"held by pipeline rank {piece.size - 1} (last stage)"))
        hf.set_submodule(head_name, LabMissingLayer(piece.size - 1))
    return records


def _slice_of(piece: PipelineSlice, rank: int) -> PipelineSlice:
    from vllm.distributed.utils import get_pp_indices

    start, end = get_pp_indices(piece.num_layers, rank, piece.size)
    return PipelineSlice(rank, piece.size, start, end, piece.num_layers)


class StageHandoff:
    """Hidden states across the stage boundary: on a rank after the first, the first held layer takes
    the received tensor in place of its input; on a rank before the last, the last held layer's output is
    what the next rank receives (the placeholders after it hand it on unchanged; other hooks on that layer,
    the probes', still see it)."""

    def __init__(self, layers: nn.ModuleList, piece: PipelineSlice, hidden_size: int) -> None:
        self.piece, self.hidden_size = piece, hidden_size
        self.incoming: torch.Tensor | None = None
        self.outgoing: torch.Tensor | None = None
        if not piece.first:
            layers[piece.start].register_forward_pre_hook(self._take, with_kwargs=True)
        if not piece.last:
            layers[piece.end - 1].register_forward_hook(self._give)

    def _take(self, module, args, kwargs):
        if self.incoming is None:
            raise RuntimeError("pipeline rank after the first ran without hidden states from the previous rank")
        hidden = self.incoming[None]  # the flattened batch as a batch of one, as run_flat hands it to HF
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, HIDDEN: hidden}

    def _give(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[0] != 1 \
                or hidden.shape[-1] != self.hidden_size:
            raise UnsupportedModelError(
                f"decoder layer {self.piece.end - 1} returned {tuple(getattr(hidden, 'shape', ()))}, not hidden states "
                f"[1, tokens, {self.hidden_size}]: the lab hands only those between pipeline ranks")
        self.outgoing = hidden

    def run(self, forward, intermediate_tensors):
        """`forward()` (the base model on this step) with the hand-offs: the last hidden states on the
        last rank, vLLM's IntermediateTensors for the next rank otherwise."""
        from vllm.sequence import IntermediateTensors

        self.incoming = None if intermediate_tensors is None else intermediate_tensors[HIDDEN]
        self.outgoing = None
        try:
            out = forward()
        finally:
            self.incoming = None
        if self.piece.last:
            return out
        if self.outgoing is None:
            raise RuntimeError("the forward ended without running this rank's last decoder layer")
        hidden, self.outgoing = self.outgoing[0], None
        return IntermediateTensors({HIDDEN: hidden})


def empty_intermediate(hidden_size: int, batch_size: int, dtype: torch.dtype, device: torch.device):
    """vLLM's `make_empty_intermediate_tensors` for the lab's one hand-off tensor."""
    from vllm.sequence import IntermediateTensors

    return IntermediateTensors({HIDDEN: torch.zeros(batch_size, hidden_size, dtype=dtype, device=device)})


__all__ = ["LabMissingEmbedding", "LabMissingLayer", "PipelineSlice", "StageHandoff", "check_pipeline",
           "current_slice", "cut_pipeline", "empty_intermediate", "pipeline_plan", "stage_layers"]
