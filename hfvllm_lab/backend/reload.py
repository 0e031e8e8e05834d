"""Weights after the first load: any subset, as RL frameworks push a trainer's weights in buckets.

vLLM processes each layer's weights once they are loaded (`quant_method.process_weights_after_
loading`): on the CPU its linear kernels pack a private copy and replace `layer.weight` with an
empty parameter, and the fused-MoE kernel repacks `w13`/`w2` in place. A second `load_weights`
would then find no weight loader (Linear), or write unpacked rows into packed storage (MoE).
So after the first load the lab keeps each vLLM layer's parameters as loaded (`WeightStash`:
the same objects, no copy, where a device does not repack), and a later load puts them back,
loads what arrived through the same loaders, and repacks only the layers it touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.errors import WeightsError


CONFIG_FLAG = "lab_weight_updates"  # an hf_overrides key: {"lab_weight_updates": False} keeps no stash


def updates_setting(config) -> tuple[bool, str]:
    """(keep loadable parameters for later load_weights calls?, where that came from). On by default;
    where the device repacks weights (the CPU) the stash costs the layers' weight bytes once more."""
    flag = getattr(config, CONFIG_FLAG, None)
    if flag is not None:
        return bool(flag), f"hf_overrides {CONFIG_FLAG}={flag!r}"
    return True, "default"


@dataclass(frozen=True)
class ExpertSlice:
    """One expert's tensor of a packed experts parameter (a checkpoint's `experts.3.up_proj.weight`)
    that arrived without the rest of its layer's experts: it updates that expert's rows only."""

    expert: int
    chunk: int  # which of `chunks` equal parts of the expert's rows (gate 0 / up 1), 0 when chunks == 1
    chunks: int
    tensor: torch.Tensor


def expert_slice(source: str, pattern: str, converter, tensor: torch.Tensor) -> ExpertSlice:
    """Where one per-expert checkpoint tensor lands in transformers' packed parameter, read from the
    conversion's own operations: MergeModulelist stacks experts on dim 0, an optional
    Concatenate(dim=1) places source pattern i at part i of each expert's rows."""
    from transformers.core_model_loading import Concatenate, MergeModulelist

    ops = list(converter.operations)
    kinds = [type(op) for op in ops]
    if kinds not in ([MergeModulelist], [MergeModulelist, Concatenate]) or ops[0].dim != 0 or (
            len(ops) == 2 and ops[1].dim != 1):
        raise WeightsError(f"{source}: transformers converts it with {ops!r}; the lab updates one expert only for "
                           "stacked (and gate/up-concatenated) experts: send every expert of that layer together")
    regex = re.escape(pattern).replace(r"\*", r"(\d+)")
    match = re.search(regex, source)
    if match is None:
        raise WeightsError(f"{source}: no expert index matches {pattern!r}")
    patterns = list(converter.source_patterns)
    chunks = len(patterns) if len(ops) == 2 else 1
    return ExpertSlice(int(match.group(1)), patterns.index(pattern) if chunks > 1 else 0, chunks, tensor)


def load_expert_slice(module: nn.Module, attr: str, piece: ExpertSlice) -> str:
    """Write one expert's rows: through the lab's fused experts, or into a packed HF parameter kept as
    HF code. Returns the parameter name (relative to `module`) that changed."""
    if hasattr(module, "load_expert"):
        return module.load_expert(attr, piece)
    param = getattr(module, attr, None)
    if not isinstance(param, torch.Tensor):
        raise WeightsError(f"{type(module).__name__} has no packed parameter {attr}")
    rows = param.data[piece.expert]
    size = rows.shape[0] // piece.chunks
    target = rows.narrow(0, piece.chunk * size, size)
    if tuple(target.shape) != tuple(piece.tensor.shape):
        raise WeightsError(f"{attr}: expert {piece.expert} part {piece.chunk} is {tuple(target.shape)}, the "
                           f"checkpoint tensor {tuple(piece.tensor.shape)}")
    target.copy_(piece.tensor)
    return attr


class WeightStash:
    """Each vLLM layer's parameters as loaded (before the device's kernels repack them)."""

    def __init__(self, model: nn.Module) -> None:
        self.params: dict[str, dict[str, nn.Parameter]] = {}
        self.modules: dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            if getattr(module, "quant_method", None) is not None:
                own = dict(module.named_parameters(recurse=False))
                if own:
                    self.params[name], self.modules[name] = own, module

    def extra_bytes(self) -> int:
        """Bytes the stash keeps alive beyond the model's live parameters (the device repacked them)."""
        total = 0
        for name, own in self.params.items():
            live = dict(self.modules[name].named_parameters(recurse=False))
            total += sum(p.numel() * p.element_size() for n, p in own.items() if live.get(n) is not p)
        return total

    def swap_in(self) -> dict[str, dict[str, nn.Parameter]]:
        """Put the loadable parameters back (they carry the weight loaders); returns the live ones."""
        live: dict[str, dict[str, nn.Parameter]] = {}
        for name, own in self.params.items():
            module = self.modules[name]
            live[name] = dict(module.named_parameters(recurse=False))
            for pname, param in own.items():
                module.register_parameter(pname, param)
        return live

    def finish(self, live: dict[str, dict[str, nn.Parameter]], touched: set[int]) -> list[str]:
        """Repack the layers holding a touched parameter (by identity: a tied head shares the
        embedding's) and give the others their live parameters back. Returns the repacked names."""
        repacked = []
        for name, own in self.params.items():
            module = self.modules[name]
            if any(id(p) in touched for p in own.values()):
                repack(module)
                repacked.append(name)
            else:
                for pname, param in live[name].items():
                    module.register_parameter(pname, param)
        return repacked


def repack(module: nn.Module) -> None:
    """Run the layer's weight processing again from its loaded parameters. vLLM's unquantized MoE
    method treats a second call as a weight update and skips its experts' own processing (the CPU
    repack), so that runs here too."""
    method = module.quant_method
    method.process_weights_after_loading(module)
    kernel = getattr(method, "moe_kernel", None)
    experts = getattr(kernel, "fused_experts", None)
    if experts is not None and hasattr(experts, "process_weights_after_loading"):
        experts.process_weights_after_loading(module)


__all__ = ["ExpertSlice", "WeightStash", "expert_slice", "load_expert_slice", "repack", "updates_setting"]
