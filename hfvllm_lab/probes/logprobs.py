"""Full next-token distributions of prefill steps, captured where the model lives.

vLLM returns only top-k logprobs; teacher-forced comparison needs every token's. A forward hook
on the model keeps the hidden states of each prefill that starts at position 0 (and of the later
chunks of a prefill chunked over several steps) and applies the model's own `compute_logits` (LM
head, logit scale, soft-cap: what vLLM samples from) to them.
"""

from __future__ import annotations

import torch


class LogprobCapture:
    """Collects one [tokens, vocab] float32 log-probability tensor per prefill, in order. A prefill
    that chunked prefill split over several steps (a long sequence) is stitched back together: a
    step whose run continues the last capture's positions extends it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.chunks: list[list[torch.Tensor]] = []  # per prefill, its chunks in order
        self.next_position: int | None = None  # where the last capture would continue
        self.handle = None

    def attach(self) -> "LogprobCapture":
        self.handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def detach(self) -> list[torch.Tensor]:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        return [torch.cat(parts) for parts in self.chunks]

    def _hook(self, module, args, kwargs, output) -> None:
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if positions is None or not isinstance(hidden, torch.Tensor):
            return
        positions = positions.reshape(-1)
        if positions.numel() == 0:
            return
        start = int(positions[0])
        if start != 0 and start != self.next_position:
            return  # a decode step or another sequence's chunk: not part of a capture
        n = _contiguous_run(positions)
        logits = self.model.compute_logits(hidden[:n])
        if logits is None:  # None on tensor-parallel ranks other than 0
            return
        rows = torch.log_softmax(logits.float(), -1).cpu()
        if start == 0:
            self.chunks.append([rows])
        else:
            self.chunks[-1].append(rows)
        self.next_position = start + n


def _contiguous_run(positions: torch.Tensor) -> int:
    """Length of the p, p+1, p+2, ... run the step starts with (one sequence of the batch)."""
    expected = torch.arange(positions.numel(), device=positions.device) + positions[0]
    mismatch = (positions != expected).nonzero()
    return int(mismatch[0]) if mismatch.numel() else positions.numel()
