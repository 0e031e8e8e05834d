"""Compiled mode: the HF base model as a stack vLLM compiles when enforce_eager=False."""

from __future__ import annotations

import torch
from torch import nn

# vLLM compiles a model class that opts in with `@support_torch_compile` (its own Llama decorates
# LlamaModel; its Transformers backend decorates transformers' decoder class in place, which
# patches transformers for the whole process). The lab decorates a class of its own instead: a
# stack that runs the HF base model on vLLM's flattened batch. LabForCausalLM keeps its plain
# nn.Module __call__ (so the Session's step hooks still fire) and calls the stack inside.
_STACK_CLASS = None


def run_flat(base: nn.Module, input_ids: torch.Tensor | None, positions: torch.Tensor,
             inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """The HF base model on vLLM's flattened batch (every scheduled sequence in one row of
    tokens): HF wants a batch axis, so the row becomes a batch of one."""
    if inputs_embeds is not None:
        inputs = {"inputs_embeds": inputs_embeds[None]}
    else:
        inputs = {"input_ids": input_ids[None]}
    out = base(**inputs, position_ids=positions[None], use_cache=False, return_dict=True)
    return out.last_hidden_state[0]


def compiled_stack_class() -> type:
    global _STACK_CLASS
    if _STACK_CLASS is None:
        from vllm.compilation.decorators import support_torch_compile

        @support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": -1, "inputs_embeds": 0})
        class LabCompiledStack(nn.Module):
            """The HF base model on [tokens] inputs, compiled by vLLM (enforce_eager=False)."""

            def __init__(self, *, vllm_config, prefix: str = "", base: nn.Module | None = None) -> None:
                super().__init__()
                object.__setattr__(self, "_lab_base", base)  # referenced, not registered twice

            def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                        intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
                return run_flat(self._lab_base, input_ids, positions, inputs_embeds)

        _STACK_CLASS = LabCompiledStack
    return _STACK_CLASS


def build_compiled_stack(vllm_config, base: nn.Module) -> nn.Module | None:
    """The compiled stack when vLLM compiles this engine (enforce_eager=False), else None."""
    from vllm.config import CompilationMode

    if vllm_config.compilation_config.mode == CompilationMode.NONE:
        return None
    return compiled_stack_class()(vllm_config=vllm_config, prefix="hf", base=base)
