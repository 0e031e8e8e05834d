"""Walk the meta-built HF model and swap Linear / RMSNorm / embedding modules for vLLM's."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.backend.attention import dispatches_through_interface
from hfvllm_lab.backend.norms import (
    PLAIN,
    build_vllm_norm,
    classify_norm,
    looks_like_norm,
    uses_cpu_kernel,
    vllm_cpu_kernel,
)
from hfvllm_lab.backend.meta import parameter_count
from hfvllm_lab.backend.quant import describe as describe_quant
from hfvllm_lab.backend.records import (
    EMBEDDING,
    EXPERTS,
    KEPT,
    LINEAR,
    NORM,
    OTHER,
    REPLACED,
    ROTARY,
    ReplacementRecord,
)
from hfvllm_lab.backend.samples import looks_like_rotary


@dataclass
class ReplaceContext:
    quant_config: object
    tp_size: int
    tp_plan: dict[str, str]
    skip: frozenset[str]  # qualified names handled elsewhere (the LM head)
    config: object = None  # the text config (MoE top-k when the router does not say)
    # -- fusion hook (backend/fuse.py) --
    fuse: bool = False  # merge q/k/v and gate/up into vLLM's fused layers before the one-to-one swap
    fusion: object = None  # the FusionPlan the pass produced (checkpoint shards, records)
    device_type: str = ""  # where the model runs; "cpu" lets eager steps use vLLM's C kernels (norms.py, rope.py)

    @property
    def cpu_norm_kernel(self) -> tuple[bool, str]:
        """(x*w norms run vLLM's `_C.rms_norm` in eager CPU steps?, why not where it was wanted);
        backend/norms.py. Wanted on the CPU with the fusions on."""
        if not (self.fuse and self.device_type == "cpu"):
            return False, ""
        return vllm_cpu_kernel("_C::rms_norm")


def _shape(module: nn.Module) -> tuple[int, ...]:
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else ()


def _record(name, kind, action, old, new=None, reason="") -> ReplacementRecord:
    return ReplacementRecord(
        name=name,
        kind=kind,
        action=action,
        original_class=type(old).__name__,
        new_class=type(new).__name__ if new is not None else None,
        shape=_shape(old),
        parameters=parameter_count(old),
        reason=reason,
    )


def tp_style(name: str, ctx: ReplaceContext) -> str:
    """The tensor-parallel style the model's `tp_plan` gives `name` ("replicate" at TP 1)."""
    if ctx.tp_size == 1:
        return "replicate"
    for pattern, style in ctx.tp_plan.items():
        regex = "^" + re.escape(pattern).replace(r"\*", r"\d+") + "$"
        if re.match(regex, name):
            return style
    return "replicate"


def build_vllm_linear(linear: nn.Linear, style: str, ctx: ReplaceContext, prefix: str) -> nn.Module:
    from vllm.model_executor.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear

    common = dict(
        input_size=linear.in_features,
        output_size=linear.out_features,
        bias=linear.bias is not None,
        quant_config=ctx.quant_config,
        prefix=prefix,
        return_bias=False,
    )
    if style.startswith("colwise"):
        layer = ColumnParallelLinear(gather_output=style == "colwise_gather_output", **common)
    elif style.startswith("rowwise"):
        layer = RowParallelLinear(input_is_parallel=style != "rowwise_split_input", **common)
    else:
        layer = ReplicatedLinear(**common)
    layer.register_forward_pre_hook(_rows_contiguous)
    return layer


def reads_weight_directly(parent: nn.Module, child_name: str) -> str | None:
    """The expression in the parent's forward that reads `self.<child>.weight`/`.bias` instead of
    calling the child (Jamba's `self.dt_proj.weight @ ...`), or None."""
    match = re.search(rf"self\.{re.escape(child_name)}\.(weight|bias)\b", _forward_source(type(parent)))
    return match.group(0) if match else None


@functools.cache
def _forward_source(cls: type) -> str:
    """A module class's forward source, read once per class ("" where it has none readable)."""
    import inspect

    try:
        return inspect.getsource(inspect.unwrap(cls.forward))
    except (OSError, TypeError):
        return ""


def _rows_contiguous(module: nn.Module, args: tuple):
    """nn.Linear takes any strides (Mamba mixers pass transposed views); vLLM's CPU GEMM needs each
    row contiguous, so such an input is copied into that layout first (same values)."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() > 1 and x.stride(-1) != 1:
        return (x.contiguous(), *args[1:])
    return None


def build_vllm_embedding(embedding: nn.Embedding, ctx: ReplaceContext, prefix: str) -> nn.Module:
    from hfvllm_lab.backend.layers import scaled_vocab_embedding

    return scaled_vocab_embedding(embedding.num_embeddings, embedding.embedding_dim, embedding_scale(embedding),
                                  ctx.quant_config, prefix)


def embedding_scale(embedding: nn.Embedding) -> float | None:
    """The constant a scaled embedding multiplies by (Gemma), refusing one we cannot read."""
    from hfvllm_lab.errors import UnsupportedModelError

    scale = getattr(embedding, "embed_scale", None)
    if isinstance(scale, torch.Tensor):
        if scale.device.type == "meta" or scale.numel() != 1:
            raise UnsupportedModelError(f"{type(embedding).__name__}.embed_scale is not a readable scalar")
        scale = float(scale.item())
    return scale


def is_packed_experts(module: nn.Module) -> bool:
    """transformers 5's packed experts: declared with use_experts_implementation, or 3-D
    gate_up_proj/down_proj parameters."""
    if hasattr(module, "has_gate") and hasattr(module, "is_transposed"):
        return True
    params = dict(module.named_parameters(recurse=False))
    return bool(params) and "down_proj" in params and all(p.ndim == 3 for p in params.values())


def replace_modules(
    model: nn.Module, root: str, ctx: ReplaceContext, *, vllm_prefix: str, base_prefix: str
) -> list[ReplacementRecord]:
    """Replace in place; return one record per candidate (Linear, norm, embedding, rotary).

    Records use HF names (`model.layers.0.mlp.up_proj`); vLLM layers get `vllm_prefix` in front.
    """
    records: list[ReplacementRecord] = []
    # -- fusion hook (backend/fuse.py): q/k/v and gate/up merged first, recorded as "fused" --
    fusion = rope = None
    if ctx.fuse:
        from hfvllm_lab.backend.fuse import fuse_modules
        from hfvllm_lab.backend.rope import plan_rope

        attention = {n: m for n, m in model.named_modules() if dispatches_through_interface(type(m))}
        # checked on the HF attention modules as built, before the q/k/v fusion changes them
        rope = plan_rope(attention, [m for m in model.modules() if looks_like_rotary(m)],
                         ctx.device_type)
        fusion = ctx.fusion = fuse_modules(model, ctx, tp_style, vllm_prefix=vllm_prefix, base_prefix=base_prefix,
                                         attention_modules=attention)

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            if name in ctx.skip:
                continue
            if fusion is not None and name in fusion.handled:  # fusion hook: a fused layer or its slices
                if name in fusion.records:
                    records.append(fusion.records[name])
                continue
            new: nn.Module | None = None
            direct = reads_weight_directly(parent, child_name) if isinstance(child, nn.Linear) else None
            if direct:
                records.append(_record(name, LINEAR, KEPT, child, reason=(
                    f"its parent's forward reads the weight itself (`{direct}`); vLLM's layers keep their "
                    "weights packed for their own kernels, so this Linear stays HF")))
            elif type(child) is nn.Linear:
                style = tp_style(name.removeprefix(base_prefix + "."), ctx)
                new = build_vllm_linear(child, style, ctx, f"{vllm_prefix}.{name}")
                reasons = [fusion.not_fused.get(name, "") if fusion is not None else "", describe_quant(new)]
                records.append(_record(name, LINEAR, REPLACED, child, new, reason="; ".join(r for r in reasons if r)))
            elif isinstance(child, nn.Linear):
                records.append(_record(name, LINEAR, KEPT, child, reason="subclass of nn.Linear with its own forward"))
            elif isinstance(child, nn.Embedding):
                if type(child).forward is nn.Embedding.forward or hasattr(child, "embed_scale"):
                    new = build_vllm_embedding(child, ctx, f"{vllm_prefix}.{name}")
                    scale = embedding_scale(child)
                    reason = f"keeps embed_scale {scale:g}" if scale is not None else ""
                    records.append(_record(name, EMBEDDING, REPLACED, child, new, reason=reason))
                else:
                    records.append(_record(name, EMBEDDING, KEPT, child, reason="embedding with a custom forward"))
            elif looks_like_norm(child):
                maths = classify_norm(child)
                if maths.convention is None:
                    records.append(_record(name, NORM, KEPT, child, reason=maths.reason))
                else:
                    use_kernel, why_not = ctx.cpu_norm_kernel
                    new = build_vllm_norm(maths, cpu_kernel=use_kernel)
                    kernel = " (eager CPU: _C.rms_norm)" if uses_cpu_kernel(new) else ""
                    if why_not and maths.convention == PLAIN:
                        kernel = f" (Python ops: {why_not})"
                    records.append(_record(name, NORM, REPLACED, child, new,
                                           reason=f"{maths.convention}{kernel}, width {maths.width}"))
            elif is_packed_experts(child):
                from hfvllm_lab.backend.moe import LabFusedExperts, describe_routing, plan_experts

                plan, why = plan_experts(child, parent, ctx.config)
                if plan is not None and plan.intermediate_size % ctx.tp_size:
                    plan, why = None, (f"expert intermediate size {plan.intermediate_size} does not split over "
                                       f"{ctx.tp_size} ranks: runs as HF")
                if plan is None:
                    records.append(_record(name, EXPERTS, KEPT, child, reason=why))
                else:
                    new = LabFusedExperts(plan, ctx.quant_config, f"{vllm_prefix}.{name}")
                    records.append(_record(
                        name, EXPERTS, REPLACED, child, new,
                        reason=(f"vLLM fused MoE: {plan.num_experts} experts, top-{plan.top_k}, {plan.activation}(gate)*up, "
                                f"intermediate {plan.intermediate_size}; {describe_routing(parent, child, ctx.config)}"),
                    ))
            elif looks_like_rotary(child):
                reason = "position embeddings stay HF: computed from buffers"
                if rope is not None:
                    reason += f"; {rope.reason}" if rope.engaged else f"; rotation stays HF: {rope.reason}"
                records.append(_record(name, ROTARY, KEPT, child, reason=reason))
            else:
                if any(True for _ in child.parameters(recurse=False)) and not dispatches_through_interface(type(child)):
                    reason = "holds parameters but is not a Linear, norm or embedding: runs as HF"
                    if any(is_packed_experts(c) for c in parent.children()):
                        reason = "MoE router: runs as HF and hands its top-k ids and weights to the experts"
                    records.append(_record(name, OTHER, KEPT, child, reason=reason))
                visit(child, name)
                continue
            if new is not None:
                setattr(parent, child_name, new)

    visit(model, root)
    return records
