"""Defects injected where users' defects live: forward wrappers that act only in decode steps, only
when a forward holds several sequences, or only at long positions (vLLM's CPU kernels prepack Linear
weights, so editing `.weight` after loading changes nothing; wrapping a forward does). Each returns a
function for `Session.apply_model` / `engine.apply_model`, and `undo` takes the wrapper off again."""

from __future__ import annotations

import torch


def _step():
    """The engine's own account of the step being run: (tokens per sequence is 1, sequences in the step)."""
    from vllm.forward_context import get_forward_context

    metadata = get_forward_context().attn_metadata
    meta = next(iter(metadata.values())) if isinstance(metadata, dict) else metadata
    if meta is None:
        return False, 0
    return getattr(meta, "max_query_len", 0) == 1, int(meta.query_start_loc.numel()) - 1


def _wrap(module: torch.nn.Module, scale_when) -> None:
    forward = module.forward

    def wrapped(*args, **kwargs):
        out = forward(*args, **kwargs)
        factor = scale_when()
        return out * factor if factor != 1.0 else out

    module.forward = wrapped


def decode_only(path: str, factor: float):
    """`module(path)`'s output times `factor` whenever the step holds one token per sequence."""

    def edit(model):
        _wrap(model.hf.get_submodule(path), lambda: factor if _step()[0] else 1.0)

    return edit


def several_sequences_only(path: str, factor: float):
    """`module(path)`'s output times `factor` whenever the forward holds more than one sequence."""

    def edit(model):
        _wrap(model.hf.get_submodule(path), lambda: factor if _step()[1] > 1 else 1.0)

    return edit


def positions_from(start: int, factor: float):
    """The model's final hidden states times `factor` at every position >= start (its positions are
    what vLLM passes to the model's forward)."""

    def edit(model):
        forward = model.forward

        def wrapped(input_ids, positions, *args, **kwargs):
            out = forward(input_ids, positions, *args, **kwargs)
            late = (positions.reshape(-1) >= start).unsqueeze(-1)
            return torch.where(late, out * factor, out)

        model.forward = wrapped

    return edit


def logit_scale_in_decode(factor: float):
    """The logits times `factor` (in float32, so no rounding can move an argmax) after every decode
    step: a temperature the engine applies behind the user's back."""

    def edit(model):
        forward, compute_logits = model.forward, model.compute_logits
        state = {"decode": False}

        def remembering(*args, **kwargs):
            state["decode"] = _step()[0]
            return forward(*args, **kwargs)

        def scaled(hidden_states):
            logits = compute_logits(hidden_states)
            return logits.float() * factor if state["decode"] and logits is not None else logits

        model.forward, model.compute_logits = remembering, scaled

    return edit


def undo(path: str | None = None):
    """Take a wrapper off (`path` a module of the HF model; None: the model's own forward)."""

    def edit(model):
        target = model if path is None else model.hf.get_submodule(path)
        vars(target).pop("forward", None)
        if path is None:
            vars(target).pop("compute_logits", None)

    return edit
