"""The sampling transform vLLM applies before its processed logprobs, for distributions computed
elsewhere (the trainer's, a floor's): temperature, then top-k and top-p masking, renormalised.

vLLM 0.32 `logprobs_mode="processed_logprobs"` is the log-softmax of the logits after temperature
and top-k/top-p (masked tokens at -inf); "raw_logprobs" (the default) is the log-softmax of the
model's logits. A trainer that wants to match the first must transform its distribution the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOGPROBS_MODES = {"raw": "raw_logprobs", "processed": "processed_logprobs"}


@dataclass(frozen=True)
class SamplingTransform:
    temperature: float = 1.0
    top_k: int = -1  # -1 or 0: off
    top_p: float = 1.0

    @property
    def identity(self) -> bool:
        return self.temperature in (0.0, 1.0) and self.top_k in (-1, 0) and self.top_p >= 1.0

    def apply(self, logprobs: "torch.Tensor") -> "torch.Tensor":
        """[rows, vocab] log-probabilities -> the processed ones (float64 for the masks' edges)."""
        import torch

        x = logprobs.double()
        if self.temperature > 0 and self.temperature != 1.0:
            x = x / self.temperature
        if self.top_k not in (-1, 0) and self.top_k < x.shape[-1]:
            kth = x.topk(self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p < 1.0:
            probs = torch.softmax(x, -1)
            sorted_probs, order = probs.sort(dim=-1)  # ascending, as vLLM's top-p masks from the tail
            drop_sorted = sorted_probs.cumsum(-1) <= 1.0 - self.top_p
            drop_sorted[..., -1] = False  # the most likely token always stays
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            x = x.masked_fill(drop, float("-inf"))
        return torch.log_softmax(x, -1)


__all__ = ["LOGPROBS_MODES", "SamplingTransform"]
