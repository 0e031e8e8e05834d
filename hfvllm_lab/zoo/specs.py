"""The zoo's catalogue: tiny, seeded configurations of real HF architectures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Shared by every spec: small enough to build in a second, with head sizes that vLLM's CPU
# attention supports (32) and a vocabulary that is exactly the byte-level tokenizer's.
VOCAB_SIZE = 260
_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    max_position_embeddings=512,
    bos_token_id=256,
    eos_token_id=257,
    pad_token_id=258,
    # Large enough that attention and MLPs visibly change the residual stream, so a broken
    # layer shows up in the outputs rather than hiding under the embedding.
    initializer_range=0.15,
)


@dataclass(frozen=True)
class ZooSpec:
    """One tiny checkpoint: architecture, config overrides and the seed of its weights."""

    name: str
    model_type: str
    summary: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # Standard deviation of logits we aim for: random tiny models have nearly flat logits,
    # which make top-k parity checks meaningless (see DESIGN.md).
    logit_std: float = 2.0

    def config_kwargs(self) -> dict[str, Any]:
        return {**_COMMON, **self.config}


SPECS: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in (
        ZooSpec(
            "llama",
            "llama",
            "Llama: the default; MHA, RMSNorm, untied LM head",
            dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
            seed=1,
        ),
        ZooSpec(
            "qwen3",
            "qwen3",
            "Qwen3: q_norm/k_norm (head_dim wide), head_dim 32 with 4 heads on hidden 64, GQA",
            dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
            seed=2,
        ),
        ZooSpec(
            "gemma",
            "gemma",
            "Gemma: (1 + weight) RMSNorm, scaled embedding, tied LM head, MQA",
            dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                 hidden_activation="gelu_pytorch_tanh"),
            seed=3,
        ),
        ZooSpec(
            "gemma2",
            "gemma2",
            "Gemma2: GQA, sliding-window layers (window 8), logit soft-capping, query_pre_attn_scalar",
            dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                 sliding_window=8, query_pre_attn_scalar=64, attn_logit_softcapping=5.0,
                 final_logit_softcapping=4.0,
                 layer_types=["sliding_attention", "full_attention"] * 2),
            seed=4,
        ),
        ZooSpec(
            "mistral",
            "mistral",
            "Mistral: GQA with a sliding window (8) on every layer",
            dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                 sliding_window=8),
            seed=5,
        ),
        ZooSpec(
            "granite",
            "granite",
            "Granite: embedding/residual/attention multipliers and logits divided by logits_scaling",
            dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                 embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.25,
                 logits_scaling=0.5),
            seed=7,
        ),
        ZooSpec(
            "cohere",
            "cohere",
            "Cohere: mean-centred LayerNorm without bias (kept as HF), parallel block, logits times logit_scale",
            dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32, logit_scale=0.5,
                 tie_word_embeddings=True),
            seed=8,
        ),
        ZooSpec(
            "qwen2-moe",
            "qwen2_moe",
            "Qwen2-MoE: 4 experts, top-2, shared expert with a sigmoid gate; checkpoint stores experts one by one",
            dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                 num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                 shared_expert_intermediate_size=64, decoder_sparse_step=1, norm_topk_prob=True),
            seed=9,
        ),
        ZooSpec(
            "gpt-neox",
            "gpt_neox",
            "GPT-NeoX: LayerNorm with bias (kept as HF), partial rotary, parallel residual, checkpoint head `embed_out`",
            dict(num_attention_heads=2, head_dim=32, tie_word_embeddings=False),
            seed=10,
        ),
        ZooSpec(
            "llama-medium",
            "llama",
            "Llama with hidden 512 (~13M parameters, ~51 MB): big enough for memory measurements",
            dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=8,
                 head_dim=64, tie_word_embeddings=False, initializer_range=0.05),
            seed=6,
        ),
        ZooSpec(
            "phi3",
            "phi3",
            "Phi-3: q/k/v and gate/up stored fused in the checkpoint (qkv_proj, gate_up_proj)",
            dict(num_attention_heads=2, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
            seed=9,
        ),
        ZooSpec(
            "llama-58m",
            "llama",
            "Llama with hidden 512, 8 layers, 8/4 heads, vocab 32000 (~58M parameters): the speed benchmark's model",
            dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=64, tie_word_embeddings=False,
                 initializer_range=0.05),
            seed=10,
        ),
    )
}

DEFAULT = "llama"
