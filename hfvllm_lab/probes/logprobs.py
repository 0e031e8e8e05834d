"""Full next-token distributions of prefill steps, captured where the model lives.

vLLM returns only top-k logprobs; teacher-forced comparison needs every token's. A forward hook
on the model keeps the hidden states of each prefill that starts at position 0 and applies the
model's own `compute_logits` (LM head, logit scale, soft-cap: what vLLM samples from) to them.
"""

from __future__ import annotations

from typing import Any

import torch


class LogprobCapture:
    """Collects one [tokens, vocab] float32 log-probability tensor per prefill, in order."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.scores: list[torch.Tensor] = []
        self.handle = None

    def attach(self) -> "LogprobCapture":
        self.handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def detach(self) -> list[torch.Tensor]:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        return self.scores

    def _hook(self, module, args, kwargs, output) -> None:
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if positions is None or not isinstance(hidden, torch.Tensor):
            return
        positions = positions.reshape(-1)
        if positions.numel() == 0 or int(positions[0]) != 0:
            return  # a decode or a later chunk: not a whole sequence
        n = _contiguous_run(positions)
        logits = self.model.compute_logits(hidden[:n])
        if logits is not None:  # None on tensor-parallel ranks other than 0
            self.scores.append(torch.log_softmax(logits.float(), -1).cpu())


def _contiguous_run(positions: torch.Tensor) -> int:
    """Length of the 0, 1, 2, ... run the step starts with (one sequence of the batch)."""
    expected = torch.arange(positions.numel(), device=positions.device)
    mismatch = (positions != expected).nonzero()
    return int(mismatch[0]) if mismatch.numel() else positions.numel()


def summary(scores: list[torch.Tensor]) -> dict[str, Any]:
    return {"prefills": len(scores), "shapes": [tuple(s.shape) for s in scores]}
