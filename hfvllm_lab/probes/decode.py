"""Full next-token distributions of sampling steps, captured in vLLM's sampler, with forced tokens.

What a user receives from vLLM comes out of sampling steps: the last prompt position of a prefill,
then one decode step per token, inside whatever batch the scheduler made. `LabDecodeProbe` is a
vLLM v1 logits processor (the engine's own extension point, registered for every engine the lab
builds, every backend). A request opts in through `SamplingParams.extra_args["hfvllm_lab"]`:

    {"key": "s3", "capture": True, "force": [token ids]}

- capture: the log-softmax of the row's logits as the model produced them (no temperature, no
  top-k/p: what vLLM's raw logprobs are computed from), one per sampling step, kept per key;
- force: the step's logits are masked to the given token, so a greedy request decodes along a
  chosen sequence through the engine's real decode path (KV cache, decode attention, batching).

A row is identified by its batch index (vLLM's `BatchUpdate` keeps it current) and its step by
the length of the request's live output-token list; a partial prefill's row is computed and then
discarded by vLLM, so a later row of the same step overwrites it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hfvllm_lab.probes.payloads import DECODE_EXTRA_KEY as EXTRA_KEY


@dataclass
class _Row:
    key: str
    capture: bool
    force: list[int] | None
    output: list[int]  # vLLM's live output-token list of the request


@dataclass
class DecodeCapture:
    """What the probe kept for one request key: step -> [vocab] float32 log-probabilities."""

    steps: dict[int, torch.Tensor] = field(default_factory=dict)

    def stacked(self) -> torch.Tensor:
        if not self.steps:
            return torch.empty(0, 0)
        n = max(self.steps) + 1
        missing = [i for i in range(n) if i not in self.steps]
        if missing:
            raise RuntimeError(f"sampling steps {missing} were not captured")
        return torch.stack([self.steps[i] for i in range(n)])


def _base_class():
    from vllm.v1.sample.logits_processor import LogitsProcessor

    return LogitsProcessor


class LabDecodeProbe(_base_class()):
    """The lab's logits processor: captures and forces rows whose requests ask for it."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        self.captures: dict[str, DecodeCapture] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        args = (sampling_params.extra_args or {}).get(EXTRA_KEY)
        if args is None:
            return
        if not isinstance(args, dict) or not isinstance(args.get("key"), str):
            raise ValueError(f"extra_args[{EXTRA_KEY!r}] needs a string 'key'")
        force = args.get("force")
        if force is not None and not all(isinstance(t, int) for t in force):
            raise ValueError(f"extra_args[{EXTRA_KEY!r}]['force'] must be a list of token ids")

    def is_argmax_invariant(self) -> bool:
        return False  # forcing changes the argmax

    def update_state(self, batch_update) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            args = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
            if args is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = _Row(args["key"], bool(args.get("capture")), args.get("force"), output)
        for a, b, direction in batch_update.moved:
            moving, other = self.rows.pop(a, None), self.rows.pop(b, None)
            if moving is not None:
                self.rows[b] = moving
            if other is not None and direction.name == "SWAP":
                self.rows[a] = other

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self.rows.items():
            if index >= logits.shape[0]:
                continue
            step = len(row.output)
            if row.capture:
                self.captures.setdefault(row.key, DecodeCapture()).steps[step] = (
                    torch.log_softmax(logits[index].float(), -1).cpu())
            if row.force is not None and step < len(row.force):
                token = row.force[step]
                keep = logits[index, token].clone()
                logits[index].fill_(float("-inf"))
                logits[index, token] = keep
        return logits

    def take(self) -> dict[str, torch.Tensor]:
        """Every key's captured steps as one [steps, vocab] tensor; forgets them (also when a key's steps
        are incomplete, which raises)."""
        captures, self.captures = self.captures, {}
        return {key: capture.stacked() for key, capture in captures.items()}

    def reset(self) -> None:
        self.captures = {}
