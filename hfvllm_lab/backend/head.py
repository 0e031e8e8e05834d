"""The LM head: vLLM's `ParallelLMHead`, tied to the input embedding when the config ties them, or
held in float32 when vLLM's own `head_dtype` asks for it (`hf_overrides={"head_dtype": "float32"}`,
`Session(lm_head_dtype="float32")`): a remedy RL users apply to the training–inference mismatch,
measured by `Session.diagnose()`. vLLM's logits processor meets that request by casting the hidden
states and the whole head weight to float32 on every step; the lab keeps float32 weights instead,
packed once by the device's kernels, and casts only the hidden states."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hfvllm_lab.backend.records import LM_HEAD, REPLACED, TIED, ReplacementRecord
from hfvllm_lab.errors import UnsupportedModelError

CONFIG_FLAG = "head_dtype"  # vLLM's own hf_overrides key: {"head_dtype": "float32"}
HEAD_DTYPES = ("float32",)


def head_dtype_setting(head_dtype: torch.dtype | None, model_dtype: torch.dtype) -> torch.dtype | None:
    """The head's own dtype where vLLM's resolved `model_config.head_dtype` differs from the model's."""
    if head_dtype is None or head_dtype == model_dtype:
        return None
    if head_dtype != torch.float32:
        raise UnsupportedModelError(f"head_dtype {head_dtype}: the lab keeps the head in the model's dtype or float32")
    return head_dtype


@dataclass
class HeadPlan:
    """What building the head decided: its record, parameters filled from another checkpoint name, and
    the head's own dtype where it differs from the model's."""

    record: ReplacementRecord | None  # None on a pipeline rank without the head
    tied_copies: dict[str, str] = field(default_factory=dict)  # checkpoint-side name -> a second parameter
    dtype: torch.dtype | None = None


def replace_lm_head(hf: nn.Module, head_name: str, root: str, quant_config, tie: bool,
                    dtype: torch.dtype | None, held: bool = True, embed_elsewhere: bool = False) -> HeadPlan:
    """The vLLM head in place of HF's. Pipeline parallel: `held` False on ranks before the last (the
    placeholder's record is the pipeline cut's); `embed_elsewhere` on the last rank when the first holds the
    input embedding, so a tied head loads its own copy of the embedding's checkpoint tensor."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    if not held:
        return HeadPlan(None, {}, dtype)
    old = hf.get_submodule(head_name)
    copies: dict[str, str] = {}
    # A head bias HF ties to another parameter (BertGeneration's lm_head.decoder.bias is lm_head.bias):
    # checkpoints store it once, under the other name, which loads both.
    if old.bias is not None:
        others = [n for n, p in hf.named_parameters(remove_duplicate=False)
                  if p is old.bias and n != f"{head_name}.bias"]
        if others:
            copies[f"{root}.{others[0]}"] = f"{root}.{head_name}.bias"
    new = ParallelLMHead(old.out_features, old.in_features, bias=old.bias is not None, quant_config=quant_config,
                         prefix=f"{root}.{head_name}", params_dtype=dtype)
    action, reasons = REPLACED, []
    if tie and embed_elsewhere:
        embed = hf.get_input_embeddings()
        name = next(n for n, m in hf.named_modules() if m is embed)
        copies[f"{root}.{name}.weight"] = f"{root}.{head_name}.weight"
        reasons.append("tied in the config; the input embedding is on pipeline rank 0, so this rank loads its own "
                       "copy of the embedding's tensor")
    elif tie:
        embed = hf.get_input_embeddings()  # the causal-LM class knows it even where its base does not
        if not isinstance(embed, VocabParallelEmbedding):
            raise UnsupportedModelError(
                f"the config ties the LM head to {type(embed).__name__}, which was not replaced by "
                "VocabParallelEmbedding, so the two cannot share one weight")
        if dtype is None:
            new = new.tie_weights(embed)
            action = TIED
            reasons.append("shares the input embedding's weight (tie_word_embeddings)")
        else:  # a float32 head cannot share a narrower embedding's storage: it loads its own copy
            name = next(n for n, m in hf.named_modules() if m is embed)
            copies[f"{root}.{name}.weight"] = f"{root}.{head_name}.weight"
            extra = old.weight.numel() * 4
            reasons.append(f"tied in the config, untied here: a float32 copy of the input embedding "
                           f"(+{extra / 2**20:.1f} MiB)")
    if dtype is not None:
        reasons.append(f"{CONFIG_FLAG}={str(dtype).removeprefix('torch.')}: float32 weights packed once, logits "
                       "computed in float32 from hidden states cast up per step")
    hf.set_submodule(head_name, new)
    record = ReplacementRecord(head_name, LM_HEAD, action, type(old).__name__, type(new).__name__,
                               tuple(old.weight.shape),
                               old.weight.numel() + (old.bias.numel() if old.bias is not None else 0),
                               "; ".join(reasons))
    return HeadPlan(record, copies, dtype)


__all__ = ["CONFIG_FLAG", "HEAD_DTYPES", "HeadPlan", "head_dtype_setting", "replace_lm_head"]
