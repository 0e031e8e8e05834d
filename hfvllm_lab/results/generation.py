"""What one path generated for one prompt, with the logprobs needed to judge parity."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Generation:
    """Greedy tokens and per-step top-k logprobs (token id -> logprob) of one prompt."""

    prompt: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    # Logprob of each prompt token given the ones before it (None for the first).
    prompt_logprobs: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top_logprobs"] = [{str(k): v for k, v in d.items()} for d in self.top_logprobs]
        return data

    def to_frame(self):
        """One row per generated step: token and the logprob it was chosen with."""
        from hfvllm_lab.results._base import frame

        tops = self.top_logprobs or [{}] * len(self.token_ids)
        return frame([{"step": i, "token": t, "logprob": top.get(t)} for i, (t, top) in enumerate(zip(self.token_ids, tops))])

    def _repr_html_(self) -> str:
        from hfvllm_lab import display

        return display.html(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Generation":
        data = dict(data)
        data["top_logprobs"] = [{int(k): v for k, v in d.items()} for d in data.get("top_logprobs", [])]
        return cls(**data)
