"""MoE experts: transformers 5's packed experts modules run on vLLM's fused-MoE kernels.

transformers 5 gives MoE models one experts module per block (`experts.gate_up_proj` [E, 2I, H],
`experts.down_proj` [E, H, I]) called as `experts(hidden [T, H], top_k_index [T, k],
top_k_weights [T, k])`, and declares, with `use_experts_implementation`, how the maths is laid
out (gate, bias, transposition, concatenation, gating function) so that other kernels can stand
in for its loop. The lab swaps that module, and only that module, for `LabFusedExperts`, which
calls vLLM's fused MoE with the top-k ids and weights the HF router computed: routing (softmax,
sigmoid, groups, correction biases, scaling factors, normalisation) stays HF code and is never
re-derived. Experts whose declared layout or activation the fused kernel does not compute
exactly are kept as HF, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.errors import AttentionPathError

# FusedMoE activation names for the activations it applies as act(gate) * up.
_ACTIVATIONS = {"SiLU": "silu", "SiLUActivation": "silu"}


@dataclass(frozen=True)
class ExpertsPlan:
    """What a packed HF experts module computes, when the fused kernel can compute it."""

    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    activation: str


def plan_experts(experts: nn.Module, block: nn.Module, config) -> tuple[ExpertsPlan | None, str]:
    """(plan, "") when `experts` can run on vLLM's fused MoE, else (None, why not)."""
    from transformers.integrations.moe import _default_apply_gate

    cls = type(experts).__name__
    if not hasattr(experts, "has_gate") or not hasattr(experts, "is_transposed"):
        return None, (f"{cls} does not declare its layout through transformers' use_experts_implementation: "
                      "runs as HF")
    gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    if not experts.has_gate or not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor):
        return None, f"{cls} has no gated gate_up_proj/down_proj pair: runs as HF"
    if getattr(experts, "has_bias", False):
        return None, f"{cls} has expert biases: runs as HF"
    if getattr(experts, "is_transposed", False) or not getattr(experts, "is_concatenated", True):
        return None, f"{cls} stores experts transposed or gate/up interleaved: runs as HF"
    if getattr(type(experts), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        return None, f"{cls} has its own gating function (_apply_gate): runs as HF"
    act = _ACTIVATIONS.get(type(getattr(experts, "act_fn", None)).__name__)
    if act is None:
        return None, f"{cls} activation {type(getattr(experts, 'act_fn', None)).__name__} has no fused-MoE kernel: runs as HF"
    names = {n for n, _ in experts.named_parameters()}
    if names != {"gate_up_proj", "down_proj"}:
        return None, f"{cls} holds parameters beyond gate_up_proj/down_proj ({sorted(names)}): runs as HF"
    if gate_up.ndim != 3 or down.ndim != 3:
        return None, f"{cls} experts are not 3-D packed tensors: runs as HF"
    num_experts, two_inter, hidden = gate_up.shape
    if tuple(down.shape) != (num_experts, hidden, two_inter // 2) or two_inter % 2:
        return None, f"{cls} gate_up_proj {tuple(gate_up.shape)} / down_proj {tuple(down.shape)} do not pair: runs as HF"
    top_k = _top_k(block, config)
    if top_k is None:
        return None, f"{cls}: no top-k found on the router or in the config: runs as HF"
    return ExpertsPlan(num_experts, top_k, hidden, two_inter // 2, act), ""


def _top_k(block: nn.Module, config) -> int | None:
    for module in block.modules():
        for attr in ("top_k", "num_experts_per_tok"):
            value = getattr(module, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    for attr in ("num_experts_per_tok", "moe_topk", "top_k"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class LabFusedExperts(nn.Module):
    """Stands where HF's experts module stood; runs vLLM's fused MoE with HF's own routing."""

    lab_accepts = ("gate_up_proj", "down_proj")  # HF's packed names, loaded by load_weights

    def __init__(self, plan: ExpertsPlan, quant_config, prefix: str) -> None:
        super().__init__()
        from vllm.model_executor.layers.fused_moe import FusedMoEFactory

        self.plan = plan
        self._topk_ids: torch.Tensor | None = None
        self.runner = FusedMoEFactory(
            num_experts=plan.num_experts,
            top_k=plan.top_k,
            hidden_size=plan.hidden_size,
            intermediate_size=plan.intermediate_size,
            renormalize=False,
            quant_config=quant_config,
            prefix=prefix,
            activation=plan.activation,
            custom_routing_function=self._routing,
        )

    def _routing(self, hidden_states, gating_output, topk, renormalize, **kwargs):
        """The router already ran (HF code): hand back its weights and ids untouched."""
        ids = self._topk_ids
        if ids is None or ids.shape != gating_output.shape:
            raise AttentionPathError("fused MoE was called without the HF router's top-k ids")
        return gating_output, ids

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                **kwargs) -> torch.Tensor:
        if top_k_index.shape[-1] != self.plan.top_k:
            raise AttentionPathError(
                f"the HF router chose {top_k_index.shape[-1]} experts per token; the fused MoE was built for "
                f"{self.plan.top_k}"
            )
        self._topk_ids = top_k_index.to(torch.int32)
        try:
            out = self.runner(hidden_states, top_k_weights.to(torch.float32))
        finally:
            self._topk_ids = None
        return out.to(hidden_states.dtype)

    def load_weights(self, weights):
        """HF's packed tensors (after transformers' conversion): gate_up_proj [E, 2I, H] -> w1 and
        w3 per expert, down_proj [E, H, I] -> w2 per expert, through vLLM's expert loader (which
        takes this rank's slice under tensor parallelism)."""
        experts = self.runner.routed_experts
        names = {id(p): n for n, p in self.named_parameters()}
        loaded: set[str] = set()
        for name, tensor in weights:
            if name == "gate_up_proj":
                param = experts.w13_weight
                gate, up = tensor.chunk(2, dim=1)
                shards = [("w1", gate), ("w3", up)]
            elif name == "down_proj":
                param = experts.w2_weight
                shards = [("w2", tensor)]
            else:
                raise KeyError(name)  # surfaces as an unexpected weight
            for shard_id, packed in shards:
                if packed.shape[0] != self.plan.num_experts:
                    from hfvllm_lab.errors import WeightsError

                    raise WeightsError(f"{name}: {packed.shape[0]} experts in the checkpoint, {self.plan.num_experts} built")
                for expert_id in range(packed.shape[0]):
                    param.weight_loader(param, packed[expert_id], weight_name=f"experts.{param_name_hint(shard_id)}",
                                        shard_id=shard_id, expert_id=expert_id)
            loaded.add(names[id(param)])
        return loaded


    def load_expert(self, attr: str, piece) -> str:
        """One expert's gate, up or down rows (a `backend.reload.ExpertSlice` of HF's packed
        `gate_up_proj` / `down_proj`), through vLLM's expert loader; the parameter name it wrote."""
        from hfvllm_lab.errors import WeightsError

        experts = self.runner.routed_experts
        if attr == "gate_up_proj" and piece.chunks == 2:
            param, shard_id = experts.w13_weight, ("w1", "w3")[piece.chunk]
        elif attr == "down_proj" and piece.chunks == 1:
            param, shard_id = experts.w2_weight, "w2"
        else:
            raise WeightsError(f"{attr} (part {piece.chunk} of {piece.chunks}) is not one of the fused experts' "
                               "gate, up or down projections")
        if not 0 <= piece.expert < self.plan.num_experts:
            raise WeightsError(f"expert {piece.expert} of {attr}: {self.plan.num_experts} experts were built")
        param.weight_loader(param, piece.tensor, weight_name=f"experts.{param_name_hint(shard_id)}",
                            shard_id=shard_id, expert_id=piece.expert)
        return {id(p): n for n, p in self.named_parameters()}[id(param)]


def param_name_hint(shard_id: str) -> str:
    return "w13_weight" if shard_id in ("w1", "w3") else "w2_weight"


def describe_routing(block: nn.Module, experts: nn.Module, config) -> str:
    """How the block routes, for the record: the router stays HF code; name it and its settings."""
    router = getattr(block, "gate", None) or getattr(block, "router", None)
    parts = [f"routing stays HF ({type(router).__name__ if router is not None else type(block).__name__}"]
    for attr in ("scoring_func", "norm_topk_prob", "routed_scaling_factor", "n_group", "topk_group"):
        value = getattr(config, attr, None)
        if value is not None:
            parts.append(f"{attr}={value}")
    return ", ".join(parts) + ")"
