"""Position ids for embeddings that number tokens from padding_idx + 1 (RoBERTa family), as HF numbers them."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hfvllm_lab.backend.records import EMBEDDING, KEPT, ReplacementRecord

# HF's own numbering, looked up on the embeddings class: its presence is what marks the family.
NUMBERING = "create_position_ids_from_input_ids"


def padded_positions(input_ids: torch.Tensor | None, positions: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """[1, T] position ids as HF numbers each forward of one sequence that vLLM's flattened step holds:
    (count of non-pad tokens so far in that forward + the tokens before it) + padding_idx for a token,
    padding_idx for a pad token. A sequence's tokens in the step are a run of consecutive positions."""
    pos = positions.reshape(-1)
    if input_ids is None:  # embeddings given: HF cannot tell pads and numbers every token
        return (pos + padding_idx + 1)[None]
    ids = input_ids.reshape(-1)
    keep = (ids != padding_idx).long()
    counted = keep.cumsum(0)
    index = torch.arange(pos.numel(), device=pos.device)
    starts = _sequence_starts(pos)
    first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), 0).values  # each run's first token
    in_run = counted - (counted[first] - keep[first])  # non-pad tokens so far within this run
    return ((in_run + pos[first]) * keep + padding_idx)[None]


def _sequence_starts(pos: torch.Tensor) -> torch.Tensor:
    """Where each sequence's tokens begin in the flattened step: vLLM's own boundaries (the attention
    metadata's query_start_loc) where a step is running, and wherever positions stop running on."""
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = pos[1:] != pos[:-1] + 1
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if is_forward_context_available():
        meta = get_forward_context().attn_metadata
        for layer in (meta if isinstance(meta, list) else [meta]):
            loc = next((m.query_start_loc for m in (layer or {}).values()
                        if getattr(m, "query_start_loc", None) is not None), None)
            if loc is not None:
                loc = loc[:-1].to(pos.device).long()
                starts[loc[loc < pos.numel()]] = True
                break
    return starts


def _numbering_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if hasattr(type(m), NUMBERING) and isinstance(getattr(m, "padding_idx", None), int)]


def numbers_own_positions(model: nn.Module) -> bool:
    """Whether the model's embeddings number positions from padding_idx + 1 when given no position ids."""
    return bool(_numbering_modules(model))


def number_positions(hf: nn.Module) -> ReplacementRecord | None:
    """Hook each embeddings module whose class numbers positions from padding_idx + 1 so it receives
    HF's numbering instead of vLLM's 0-based positions; its replacement-log record, or None."""
    found = _numbering_modules(hf)
    if not found:
        return None
    for _, module in found:
        module.register_forward_pre_hook(_renumber, with_kwargs=True)
    name, module = found[0]
    return ReplacementRecord(
        name, EMBEDDING, KEPT, type(module).__name__, None, (), 0,
        f"numbers positions from padding_idx + 1 = {module.padding_idx + 1} ({type(module).__name__}."
        f"{NUMBERING}): the lab hands it HF's numbering of each forward instead of vLLM's 0-based positions "
        "(a pad token keeps position padding_idx and is not counted)")


def _renumber(module: nn.Module, args: tuple, kwargs: dict):
    bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(arguments)))  # self
    positions = arguments.get("position_ids")
    if positions is None:
        return None
    arguments["position_ids"] = padded_positions(arguments.get("input_ids"), positions, module.padding_idx)
    arguments.pop("past_key_values_length", None)  # the numbering above already counts the tokens before
    return (), arguments


__all__ = ["number_positions", "numbers_own_positions", "padded_positions"]
