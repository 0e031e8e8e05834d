"""Build modules with parameters on the meta device while buffers stay real."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

META = torch.device("meta")


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside lands on `meta`; buffers (rotary tables, embedding
    scales) are created wherever the surrounding device context says, so they keep values."""
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device != META:
            registered = module._parameters[name]
            module._parameters[name] = type(registered)(
                registered.to(META), requires_grad=registered.requires_grad
            )

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes on real devices, bytes still on meta) over unique parameters."""
    real = meta = 0
    for p in module.parameters():
        size = p.numel() * p.element_size()
        if p.device == META:
            meta += size
        else:
            real += size
    return real, meta


def buffer_bytes(module: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers() if b.device != META)


def materialize(module: nn.Module, device: torch.device, dtype: torch.dtype,
                keep_fp32: tuple[str, ...] = ()) -> list[str]:
    """Give every meta parameter real storage on `device`; return the names kept in float32.

    The storage is uninitialized on purpose (it is overwritten by the checkpoint); the weight
    loader refuses to finish while any parameter was not loaded. Parameters whose name contains
    a `keep_fp32` fragment (the model's `_keep_in_fp32_modules_strict`) stay float32, as
    transformers keeps them.
    """
    kept: list[str] = []
    for mod_name, mod in module.named_modules():
        for name, param in list(mod.named_parameters(recurse=False)):
            if param.device != META:
                continue
            qualified = f"{mod_name}.{name}" if mod_name else name
            target = dtype if param.dtype.is_floating_point else param.dtype
            if target in (torch.float16, torch.bfloat16) and any(f in qualified for f in keep_fp32):
                target = torch.float32
                kept.append(qualified)
            data = torch.empty(param.shape, dtype=target, device=device)
            setattr(mod, name, nn.Parameter(data, requires_grad=False))
    return kept


def replicated_bytes(module: nn.Module) -> int:
    """Bytes of parameters every tensor-parallel rank holds whole (norms, replicated projections and routers,
    a row-parallel bias, modules kept as HF code); the rest are shards: vLLM's column / row-parallel linears,
    its vocab-parallel embedding and head, its fused experts."""
    from vllm.model_executor.layers.linear import LinearBase, ReplicatedLinear, RowParallelLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    experts = {id(p) for m in module.modules() if type(m).__name__ == "LabFusedExperts" for p in m.parameters()}
    total = 0
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if p.device == META:
                continue
            sharded = (id(p) in experts or isinstance(mod, VocabParallelEmbedding)
                       or (isinstance(mod, LinearBase) and not isinstance(mod, ReplicatedLinear)
                           and not (isinstance(mod, RowParallelLinear) and name == "bias")))
            if not sharded:
                total += p.numel() * p.element_size()
    return total


SHARDED_WEIGHTS = ("weight", "weight_packed", "qweight", "w13_weight")


def with_shard_shapes(root: nn.Module, records: list) -> list:
    """Records of modules whose weight this tensor-parallel rank holds only part of, with that part's shape."""
    from dataclasses import replace

    out = []
    for record in records:
        try:
            module = root.get_submodule(record.name)
        except AttributeError:
            out.append(record)
            continue
        weight = next((p for n, p in module.named_parameters() if n.rsplit(".", 1)[-1] in SHARDED_WEIGHTS), None)
        shape = tuple(weight.shape) if weight is not None else ()
        split = bool(shape and record.shape) and shape != tuple(record.shape)
        out.append(replace(record, shard_shape=shape) if split else record)
    return out
