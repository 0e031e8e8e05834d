"""What a stateful module keeps per request, as probed: plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod
from typing import Any

import torch

CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "cache_params", "layer_past")
# Attribute of the HF module that holds its state slot (a vLLM layer, so vLLM finds it).
STATE_ATTR = "lab_state"
# Keyword arguments that mark padding inside a batch; vLLM's flattened rows hold none, and a
# per-request call has no padding either.
MASK_ARGUMENTS = ("attention_mask", "conv_mask", "mask")

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


@dataclass(frozen=True)
class StateTensor:
    """One tensor a module keeps per request: an HF cache layer's conv or recurrent state."""

    kind: str  # "conv" | "recurrent"
    index: int  # the state's index within its HF cache layer (several convolutions: q, k, v)
    shape: tuple[int, ...]  # per request, without the batch axis
    dtype: str

    @property
    def bytes(self) -> int:
        return prod(self.shape) * torch.empty((), dtype=_DTYPES[self.dtype]).element_size()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StateLayout:
    """What one kind of stateful module keeps per request, as probed."""

    module_class: str
    cache_argument: str
    tensors: tuple[StateTensor, ...]

    @property
    def bytes_per_request(self) -> int:
        return sum(t.bytes for t in self.tensors)

    def describe(self) -> str:
        parts = [f"{t.kind}[{t.index}] {'x'.join(map(str, t.shape))} {t.dtype}" for t in self.tensors]
        return f"{', '.join(parts)} = {self.bytes_per_request / 1024:.1f} KiB per request"
