"""Small vLLM-layer subclasses the backend needs (imported only inside a vLLM process)."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding


class ScaledVocabEmbedding(VocabParallelEmbedding):
    """`VocabParallelEmbedding` that multiplies by a constant, as Gemma's scaled embeddings do."""

    def __init__(self, num_embeddings: int, embedding_dim: int, embed_scale: float, **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.embed_scale = embed_scale

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        out = super().forward(input_)
        # Round the scale to the weight dtype first, as HF does, so bf16 runs agree bit for bit.
        return out * torch.tensor(self.embed_scale, dtype=self.weight.dtype, device=out.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, embed_scale={self.embed_scale:g}"


def scaled_vocab_embedding(num, dim, scale, quant_config, prefix) -> VocabParallelEmbedding:
    if scale is None:
        return VocabParallelEmbedding(num, dim, quant_config=quant_config, prefix=prefix)
    return ScaledVocabEmbedding(num, dim, scale, quant_config=quant_config, prefix=prefix)
