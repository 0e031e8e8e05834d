"""Capture the output of observed modules during one forward, in execution order."""

from __future__ import annotations

import torch

from hfvllm_lab.probes.modules import ObservedModule


def first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class HiddenCapture:
    """Records (name, CPU float32 tensor [tokens, ...]) for each observed module's output."""

    def __init__(self, modules: list[ObservedModule]) -> None:
        self.modules = [m for m in modules if m.kind != "lm_head"]
        self.outputs: dict[str, torch.Tensor] = {}  # first forward only, in execution order
        self.handles: list = []

    def __enter__(self) -> "HiddenCapture":
        for observed in self.modules:
            self.handles.append(observed.module.register_forward_hook(self._hook(observed.name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, name: str):
        def hook(module, args, output):
            tensor = first_tensor(output)
            if tensor is None or name in self.outputs:
                return
            # a copy: later in-place work (the rotary kernel rotates q/k slices in place) must not reach it
            tensor = tensor.detach().to("cpu", torch.float32, copy=True)
            if tensor.dim() >= 3 and tensor.shape[0] == 1:  # HF: [1, tokens, hidden]
                tensor = tensor[0]
            self.outputs[name] = tensor.reshape(tensor.shape[0], -1)

        return hook
