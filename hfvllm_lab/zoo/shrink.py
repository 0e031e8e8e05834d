"""Shrink any architecture of transformers' causal-LM auto mapping to a tiny deterministic checkpoint.

``shrunk_path("mixtral")`` takes the model type's config class with its defaults, shrinks it —
hidden 64, 2 to 4 layers, head size 32 (one of vLLM's CPU attention head sizes), the zoo's
byte-level vocabulary of 260 tokens, 4 experts with top-2 routing, sliding windows of 8 tokens,
soft-caps that bite — keeping every per-layer list consistent, builds the model with seeded
weights (norm weights perturbed, LM head scaled so logits have std ~2, as the zoo does) and saves
it with ``save_pretrained`` (so MoE experts are stored per expert, as real checkpoints are) beside
the zoo's tokenizer. Checkpoints are cached under ``<lab cache>/zoo/shrunk-<type>-<digest>``,
the digest covering the shrunk config, the recipe version and transformers' version.

Per-layer lists (``layer_types``, ``no_rope_layers``, ``mlp_layer_types``, index lists such as
``moe_layers`` / ``full_attn_idxs``, …) are resampled together: the shrunk model keeps one layer
for each distinct combination of per-layer values of the default model, in order, 2 to 4 layers.

A model type that cannot be shrunk (multimodal, audio, a config that does not build from its
defaults, a shrunk model that transformers itself cannot run) raises :class:`CannotShrinkError`
with the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfvllm_lab.errors import LabError, first_line

# Bump when the recipe changes, so cached shrunk checkpoints are rebuilt.
SHRINK_VERSION = 2  # 2: no parameter is left constant (perturb_constants)
HIDDEN = 64
HEAD_DIM = 32
FFN = 128
MOE_FFN = 64
EXPERTS = 4
TOP_K = 2
WINDOW = 8
MAX_LAYERS = 4
INIT_RANGE = 0.1
CONSTANT_NOISE = 0.1  # std of the noise on constant-initialized parameters, relative to |c| (or 1 for zeros)
LOGIT_STD = 2.0
ATTN_SOFTCAP = 5.0
FINAL_SOFTCAP = 4.0
LOGITS_SCALING = 2.0
QKV_CLIP = 1.5

# Sub-configs that mean "not a text-only model".
MULTIMODAL_SUBCONFIGS = ("vision_config", "audio_config", "vq_config", "audio_encoder_config", "patcher_config",
                         "speech_config", "image_config")
# Model types whose causal-LM class consumes more than text, by what they consume.
NON_TEXT = {
    "fuyu": "image patches (multimodal)",
    "moshi": "audio codebooks (speech-text)",
    "musicgen": "audio codebooks (text-to-music)",
    "musicgen_melody": "audio codebooks (text-to-music)",
    "whisper": "audio encoder states (speech decoder with cross-attention)",
    "trocr": "image encoder states (OCR decoder with cross-attention)",
}

_WIDTH = ("hidden_size", "n_embd", "d_model", "emb_dim", "embedding_dim", "word_embed_proj_dim", "embedding_size",
          "input_embedding_size", "output_embedding_size", "router_hidden_size", "backbone_hidden_size",
          "lru_width", "attention_hidden_size", "ple_embed_dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers",
           "num_decoder_layers", "num_encoder_layers", "num_blocks", "num_layers_per_stack")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads",
          "encoder_attention_heads", "attention_heads", "num_decoder_attention_heads",
          "num_encoder_attention_heads", "swa_num_attention_heads", "index_n_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "kv_n_heads", "swa_num_key_value_heads",
             "num_query_groups")
_HEAD_DIMS = ("head_dim", "kv_channels", "attention_head_dim", "attention_head_size", "d_head", "dim_head",
              "swa_head_dim", "index_head_dim", "qk_head_dim", "v_head_dim", "linear_head_dim",
              "linear_key_head_dim", "linear_value_head_dim", "mamba_d_head", "mamba_head_dim", "mamba_headdim")
_FFN = ("intermediate_size", "n_inner", "ffn_dim", "decoder_ffn_dim", "encoder_ffn_dim", "ffn_hidden_size", "dff",
        "dim_ff", "d_inner", "feed_forward_size", "intermediate_size_mlp", "dense_intermediate_size")
_MOE_FFN = ("moe_intermediate_size", "expert_ffn_hidden_size", "shared_expert_intermediate_size",
            "moe_shared_expert_intermediate_size", "shared_intermediate_size")
_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "moe_top_k")
_SHARED = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
_ONE = ("n_group", "topk_group", "num_expert_group", "first_k_dense_replace", "num_dense_layers", "mamba_n_groups",
        "n_groups", "mamba_ngroups", "num_mem_blocks", "interleave_moe_layer_step", "decoder_sparse_step",
        "moe_layer_interval", "moe_layer_start_index")
_WINDOWS = ("sliding_window", "sliding_window_size", "window_size", "attention_window_size", "local_attention")
_FIXED: dict[str, Any] = {
    # MLA (DeepSeek-style): q/k head = nope 32 + rope 32 = 64, v head 32 (real ones differ too: 192 vs 128)
    "q_lora_rank": 32, "kv_lora_rank": 32, "o_lora_rank": 32, "qk_rope_head_dim": 32, "qk_nope_head_dim": 32,
    "index_topk": 8, "rotary_dim": 16,
    # state-space / linear attention / recurrent widths
    "mamba_d_state": 16, "ssm_state_size": 16, "state_size": 16, "mamba_n_heads": 4, "mamba_num_heads": 4,
    "mamba_dt_rank": 8, "time_step_rank": 8, "mamba_d_ssm": 128, "mamba_chunk_size": 32, "chunk_size": 32,
    "linear_num_key_heads": 2, "linear_num_value_heads": 2, "linear_num_heads": 2, "n_mamba_heads": 2,
    "hidden_size_per_layer_input": 16, "laurel_rank": 8, "adapter_rank": 8, "hc_lowrank": 8,
    # periods that place attention / experts inside 2 layers (Jamba: layer 0 mamba+dense, 1 attention+MoE)
    "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
    "global_attn_every_n_layers": 2, "sliding_window_pattern": 2, "_sliding_window_pattern": 2,
    "no_rope_layer_interval": 2,
}
_SOFTCAPS = {"attn_logit_softcapping": ATTN_SOFTCAP, "final_logit_softcapping": FINAL_SOFTCAP,
             "logits_soft_cap": FINAL_SOFTCAP, "output_logit_soft_cap": FINAL_SOFTCAP,
             # logit multipliers that default to 1.0 (Granite divides by it, HyperCLOVA X multiplies):
             # a path that drops or inverts one must change the logits
             "logits_scaling": LOGITS_SCALING}
_SIZE_KEYS = frozenset(_WIDTH + _HEADS + _KV_HEADS + _HEAD_DIMS + _FFN + _MOE_FFN)
# Model types whose defaults need more than the rules above.
_SPECIAL: dict[str, dict[str, Any]] = {
    # CodeGen splits q/k/v over 4 "mp" shards: heads must divide by 4 (4 x 32 = 128 wide)
    "codegen": {"n_embd": 128, "n_head": 4},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "gemma3n_text": {"num_kv_shared_layers": 0},
    "dots1": {"n_routed_experts": EXPERTS, "num_experts_per_tok": TOP_K, "n_shared_experts": 1,
              "first_k_dense_replace": 1},
    # DBRX's attention still reads attn_config.rope_theta, which real checkpoints carry but the config
    # class no longer declares (a dict value is merged into the sub-config); its q/k/v clip defaults to
    # None, which transformers' clamp refuses (real ones clip at 8): here one that bites (|qkv| p90 ~1.3)
    "dbrx": {"attn_config": {"rope_theta": 10000.0, "clip_qkv": QKV_CLIP}},
    # Zamba ties every hybrid layer's shared transformer block to the first one's: with a single hybrid
    # layer transformers' tie rule matches nothing and the model does not build, so two of each kind
    "zamba": {"num_hidden_layers": 4, "layers_block_type": ["linear_attention", "hybrid"] * 2},
    # LongCat reads qk_head_dim itself (the DeepSeek-style models recompute it from nope + rope, so the MLA
    # rule below leaves theirs as it was): nope 32 + rope 32
    "longcat_flash": {"qk_head_dim": 64},
    # Qwen4-Exp's default layers include QSA (indexed) attention, whose indexer its defaults leave unset:
    # 2 index heads of 32 over one key head, blocks of 4 tokens, 16 tokens kept (the prompts are longer)
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": HEAD_DIM,
                       "indexer_budget": 16, "indexer_compress_ratio": 4},
    # Cohere Compass's text model reads RoPE per layer type (M-RoPE sections over head_dim / 2) and its
    # defaults give none: its default sections (22, 22, 20), for heads of 128, scaled to heads of 32
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0,
                                                                   "mrope_section": [6, 6, 4]}}},
}
# Per-layer lists whose length is the layer count even where no layer-count key says so.
_PER_LAYER_NAMES = ("layer_types", "layers_block_type", "mlp_layer_types", "indexer_types", "no_rope_layers",
                    "layer_rope_theta", "num_attention_heads_per_layer", "attention_layers",
                    "activation_sparsity_pattern")
# Lists of layer indices.
_INDEX_LISTS = ("full_attn_idxs", "moe_layers", "hybrid_layer_ids", "mlp_only_layers", "ple_layer_ids",
                "attn_layer_indices")


class CannotShrinkError(LabError):
    """A model type the shrinker cannot turn into a tiny text-only checkpoint, with the reason."""


@dataclass
class ShrinkPlan:
    """What the shrinker decided: the config dict, the default layers it kept, the changes made."""

    model_type: str
    class_name: str
    config: dict[str, Any]
    kept_layers: list[int]
    changes: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        import transformers

        payload = json.dumps({"type": self.model_type, "config": self.config, "version": SHRINK_VERSION,
                              "transformers": transformers.__version__}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def causal_lm_types() -> dict[str, str]:
    """model type -> causal-LM class name, as transformers' auto mapping lists them."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def seed_of(model_type: str) -> int:
    return int(hashlib.sha256(model_type.encode()).hexdigest()[:8], 16) % (2**31)


def plan(model_type: str) -> ShrinkPlan:
    """The shrunk config of `model_type` (no weights built). Raises CannotShrinkError."""
    from transformers import CONFIG_MAPPING

    types = causal_lm_types()
    if model_type not in types:
        raise CannotShrinkError(f"{model_type!r} is not in transformers' causal-LM auto mapping")
    class_name = types[model_type]
    if class_name.endswith("ForConditionalGeneration"):
        raise CannotShrinkError(f"multimodal: {class_name} takes images/audio beside text{_text_twin(model_type)}")
    if model_type in NON_TEXT:
        raise CannotShrinkError(f"not text-only: {class_name} consumes {NON_TEXT[model_type]}")
    try:
        base = CONFIG_MAPPING[model_type]()
    except Exception as exc:
        raise CannotShrinkError(f"its config class does not build from defaults: {type(exc).__name__}: "
                                f"{first_line(exc, 200)}") from None
    subs = set(getattr(base, "sub_configs", None) or {})
    multimodal = sorted(subs & set(MULTIMODAL_SUBCONFIGS))
    if multimodal:
        raise CannotShrinkError(f"multimodal config ({', '.join(multimodal)}){_text_twin(model_type)}")
    config = base.to_dict()
    changes: dict[str, Any] = {}
    kept = _resample_layers(config, changes)
    _shrink_dict(config, len(kept), changes)
    for name in subs:  # text sub-configs (DBRX attn/ffn, MPT attn, Gemma4 assistant text)
        if isinstance(config.get(name), dict):
            sub_changes: dict[str, Any] = {}
            _resample_layers(config[name], sub_changes, kept)
            _shrink_dict(config[name], len(kept), sub_changes)
            changes.update({f"{name}.{k}": v for k, v in sub_changes.items()})
    for key in ("architectures", "_name_or_path", "transformers_version", "auto_map"):
        config.pop(key, None)
    for name in subs:
        if isinstance(config.get(name), dict):
            for key in ("_name_or_path", "output_attentions", "transformers_version", "architectures"):
                config[name].pop(key, None)
    return ShrinkPlan(model_type, class_name, config, kept, changes)


def _text_twin(model_type: str) -> str:
    for candidate in (f"{model_type}_text", model_type.replace("_unified", "_unified_text")):
        if candidate != model_type and candidate in causal_lm_types():
            return f"; its text model is covered as {candidate!r}"
    return ""


def _layer_count(config: dict) -> int | None:
    for key in _LAYERS:
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    for key in _PER_LAYER_NAMES:
        if isinstance(config.get(key), list) and config[key]:
            return len(config[key])
    return None


def _resample_layers(config: dict, changes: dict, kept: list[int] | None = None) -> list[int]:
    """Keep one layer per distinct combination of per-layer values (2..4 layers), and cut every
    per-layer list and index list down to those layers. Returns the kept default-layer indices."""
    total = _layer_count(config)
    if kept is None:
        if "block_types" in config and isinstance(config["block_types"], list):  # a cycle, not per layer
            kept = list(range(min(MAX_LAYERS, max(2, len(config["block_types"])))))
        elif total is None:
            kept = [0, 1]
        else:
            per_layer = [k for k in config if _is_per_layer(k, config[k], total)]
            index_lists = [k for k in _INDEX_LISTS if isinstance(config.get(k), list)]
            by_layer = _layer_keyed(config)
            signature = [tuple([_hashable(config[k][i]) for k in per_layer] +
                               [i in config[k] for k in index_lists] +
                               [_hashable(by_layer.get(i))]) for i in range(total)]
            kept, seen = [], set()
            for i, sig in enumerate(signature):
                if sig not in seen:
                    seen.add(sig)
                    kept.append(i)
            kept = kept[:MAX_LAYERS]
            while len(kept) < 2 and len(kept) < total:
                kept.append(next(i for i in range(total) if i not in kept))
            kept.sort()
    if total is not None:
        for key, value in list(config.items()):
            if total > 1 and _is_per_layer(key, value, total):
                config[key] = [value[i] for i in kept if i < len(value)]
                changes[key] = config[key]
        for key in _INDEX_LISTS:
            if isinstance(config.get(key), list):
                config[key] = [j for j, i in enumerate(kept) if i in config[key]]
                changes[key] = config[key]
        by_layer = _layer_keyed(config)
        if by_layer:
            config["per_layer_config"] = {str(j): _shrink_layer_entry(by_layer[i]) for j, i in enumerate(kept)
                                          if i in by_layer}
            changes["per_layer_config"] = config["per_layer_config"]
    return kept


def _layer_keyed(config: dict) -> dict[int, Any]:
    """`per_layer_config` (Gemma4: {"05": {"head_dim": 512}, ...}) as {layer index: entry}."""
    value = config.get("per_layer_config")
    if not isinstance(value, dict):
        return {}
    try:
        return {int(k): v for k, v in value.items()}
    except (TypeError, ValueError):
        return {}


def _shrink_layer_entry(entry):
    # A per-layer head size different from the others' 32 keeps per-layer geometry exercised.
    if isinstance(entry, dict):
        return {k: (2 * HEAD_DIM if k in _HEAD_DIMS and _positive_int(v) else v) for k, v in entry.items()}
    return entry


def _is_per_layer(key: str, value, total: int) -> bool:
    return (isinstance(value, list) and len(value) == total and key not in _INDEX_LISTS
            and (key in _PER_LAYER_NAMES or key in _SIZE_KEYS or key.endswith(("_types", "_layers", "_pattern"))))


def _hashable(value):
    return json.dumps(value, sort_keys=True, default=str)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _shrink_dict(config: dict, layers: int, changes: dict) -> None:
    def put(key, value):
        if isinstance(config.get(key), list) and not isinstance(value, list):
            value = [value] * len(config[key])  # a per-layer size list (Gemma3n intermediate_size)
        if config.get(key) != value:
            config[key] = value
            changes[key] = value

    def sized(key) -> bool:
        value = config.get(key)
        return _positive_int(value) or (isinstance(value, list) and bool(value) and all(map(_positive_int, value)))

    # Zamba's shared attention reads the hidden state beside the embeddings (2 x hidden wide): keep the ratio
    width, attention = config.get("hidden_size"), config.get("attention_hidden_size")
    attention_width = (attention // width if _positive_int(width) and _positive_int(attention)
                       and attention % width == 0 else None)
    heads = config.get("num_attention_heads") or config.get("n_head") or config.get("num_heads")
    kv = next((config[k] for k in _KV_HEADS if _positive_int(config.get(k))), None)
    gqa = _positive_int(heads) and kv is not None and 1 < kv < heads
    mqa = kv == 1 or config.get("multi_query") is True
    explicit_head_dim = any(_positive_int(config.get(k)) for k in ("head_dim", "kv_channels", "attention_head_dim"))
    # With an explicit head size GQA keeps 4 query / 2 KV heads of 32 (as the zoo's qwen3);
    # without one the head size is hidden / heads, so 2 heads of 32.
    n_heads = 4 if gqa and explicit_head_dim else 2
    n_kv = 1 if mqa else (2 if gqa and explicit_head_dim else (1 if gqa else n_heads))
    for keys, value in ((_WIDTH, HIDDEN), (_LAYERS, layers), (_HEADS, n_heads), (_KV_HEADS, n_kv),
                        (_HEAD_DIMS, HEAD_DIM), (_FFN, FFN), (_MOE_FFN, MOE_FFN)):
        for key in keys:
            if sized(key):
                put(key, value)
    for key in _EXPERTS:
        if _positive_int(config.get(key)) and config[key] > 1:
            put(key, EXPERTS)
    for key in _TOP_K:
        if _positive_int(config.get(key)):
            put(key, min(TOP_K, config[key]) if config[key] < TOP_K else TOP_K)
    for key in _SHARED:
        if _positive_int(config.get(key)):
            put(key, 1)
    for key in _ONE:
        if _positive_int(config.get(key)):
            put(key, 1)
    # Defaults left as None that the modelling code reads as numbers (transformers' own defaults
    # for Ministral / Nemotron / DeepSeek-V2 do not build): fill them consistently.
    if "head_dim" in config and config["head_dim"] is None and _positive_int(heads):
        put("head_dim", HEAD_DIM)
    for key in _KV_HEADS[:1]:
        if key in config and config[key] is None and _positive_int(heads):
            put(key, n_kv)
    if any(_positive_int(config.get(k)) for k in _EXPERTS):
        for key in _TOP_K[:1]:
            if key in config and config[key] is None:
                put(key, TOP_K)
    if _positive_int(config.get("qk_rope_head_dim")):
        if "head_dim" in config:
            put("head_dim", _FIXED["qk_rope_head_dim"])  # MLA: rope runs on the rope part of the head
        if _positive_int(config.get("qk_head_dim")):
            put("qk_head_dim", _FIXED["qk_rope_head_dim"] + (config.get("qk_nope_head_dim") or 0))
    if "attn_layer_indices" in config and not config["attn_layer_indices"]:
        put("attn_layer_indices", [layers - 1])  # hybrids (Bamba) default to no attention layer at all
    for key in ("layer_types", "layers_block_type"):
        # hybrids whose per-layer kinds default to Mamba only (Granite 4.0-H: transformers' model then asks
        # its cache for a sequence length that only attention layers hold): the last layer attends
        kinds = config.get(key)
        if isinstance(kinds, list) and kinds and set(kinds) == {"linear_attention"} and _positive_int(heads):
            put(key, kinds[:-1] + ["full_attention"])
    if _positive_int(config.get("expand")) and _positive_int(config.get("num_heads")) and "head_dim" in config:
        put("num_heads", config["expand"] * HIDDEN // HEAD_DIM)  # Mamba2: heads x head_dim = expand x hidden
    if attention_width:
        put("attention_hidden_size", attention_width * HIDDEN)
    shrunk_heads = next((config[k] for k in _HEADS if _positive_int(config.get(k))), None)
    for key in ("qk_dim_factor", "v_dim_factor"):
        # q/k and v widths given as factors of the hidden size (xLSTM): heads of 32 as everywhere. (0.5 x 64
        # would make q/k heads of 16, and transformers' cache, which rounds the width up to 64, would not fit.)
        if isinstance(config.get(key), (int, float)) and not isinstance(config[key], bool) and shrunk_heads:
            put(key, HEAD_DIM * shrunk_heads / HIDDEN)
    if isinstance(config.get("axial_pos_embds_dim"), list):
        put("axial_pos_embds_dim", [HIDDEN // 2, HIDDEN // 2])
    for key, value in _SPECIAL.get(config.get("model_type"), {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            value = {**config[key], **value}
        put(key, value)
    if _positive_int(config.get("moe_layer_end_index")):
        put("moe_layer_end_index", layers - 1)
    for key in _WINDOWS:
        if _positive_int(config.get(key)):
            put(key, WINDOW)
    if _positive_int(config.get("max_window_layers")):
        put("max_window_layers", layers)
    if _positive_int(config.get("zero_expert_num")):
        put("zero_expert_num", 2)
    for key, value in _FIXED.items():
        if _positive_int(config.get(key)):
            put(key, value)
    for heads_key, dim_key, expand_key in (("n_mamba_heads", "mamba_headdim", "mamba_expand"),
                                           ("mamba_n_heads", "mamba_d_head", "mamba_expand"),
                                           ("mamba_num_heads", "mamba_head_dim", "expand")):
        # Mamba-2 mixers: heads x head size = expand x hidden (Zamba2's 2 fixed heads of 32 would not fill 128)
        if all(_positive_int(config.get(k)) for k in (heads_key, dim_key, expand_key)):
            put(heads_key, config[expand_key] * HIDDEN // config[dim_key])
    if all(_positive_int(config.get(k)) for k in ("num_layers_per_stack", "H_cycles", "L_cycles")):
        # HRM runs its layer stack in H x (L + 1) cycles, each with cache slots of its own: the config
        # counts every slot as a hidden layer
        put("num_hidden_layers", config["num_layers_per_stack"] * config["H_cycles"] * (config["L_cycles"] + 1))
    if config.get("default_language") is None and isinstance(config.get("languages"), list) and config["languages"]:
        put("default_language", config["languages"][0])  # X-MOD: the language adapter to run, as a checkpoint sets it
    for key, value in _SOFTCAPS.items():
        if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool) and config[key] > 0:
            put(key, value)
    if isinstance(config.get("num_attention_heads_per_layer"), list):
        put("num_attention_heads_per_layer", [n_heads] * len(config["num_attention_heads_per_layer"]))
    # vocabulary: the zoo's byte-level tokenizer (256 bytes + <s> </s> <pad> <unk>)
    from hfvllm_lab.zoo.specs import VOCAB_SIZE

    for key in ("vocab_size", "decoder_vocab_size", "vocab_size_per_layer_input"):
        if _positive_int(config.get(key)):
            put(key, VOCAB_SIZE)
    for key, value in (("bos_token_id", 256), ("eos_token_id", 257), ("pad_token_id", 258)):
        if key in config:
            put(key, value)
    for key, value in list(config.items()):
        if key.endswith(("_token_id", "_token_index", "_index")) and _positive_int(value) and value >= VOCAB_SIZE:
            put(key, VOCAB_SIZE - 1)
    for key in ("initializer_range", "init_std"):
        if isinstance(config.get(key), float):
            put(key, INIT_RANGE)
    if "is_decoder" in config and config.get("is_decoder") is False:
        put("is_decoder", True)  # a causal LM is a decoder (BERT-style classes read the flag)


# -- building ---------------------------------------------------------------------------------------


def checkpoint_dir(p: ShrinkPlan) -> Path:
    from hfvllm_lab.zoo.build import cache_root

    return cache_root() / "zoo" / f"shrunk-{p.model_type}-{p.digest()}"


def is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file() and (
        directory / "shrink.json").is_file()


def shrunk_path(model_type: str) -> Path:
    """The tiny checkpoint directory of `model_type`, built on first use and cached."""
    p = plan(model_type)
    target = checkpoint_dir(p)
    if is_complete(target):
        return target
    from hfvllm_lab.zoo.build import build_atomically

    return build_atomically(target, f"shrunk-{model_type}", lambda staging: write_checkpoint(p, staging))


def build_config(p: ShrinkPlan):
    from transformers import CONFIG_MAPPING

    try:
        config = CONFIG_MAPPING[p.model_type].from_dict(dict(p.config))
    except Exception as exc:
        raise CannotShrinkError(f"the shrunk config does not validate: {type(exc).__name__}: {first_line(exc, 200)}") from None
    config.architectures = None
    return config


def build_model(p: ShrinkPlan):
    """The seeded model of a plan, float32 on the CPU, logits scaled to std ~2."""
    import torch
    from transformers import AutoModelForCausalLM

    from hfvllm_lab.zoo.build import perturb_norms

    config = build_config(p)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed_of(p.model_type))
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        except Exception as exc:
            raise CannotShrinkError(f"transformers cannot build the shrunk model: {type(exc).__name__}: "
                                    f"{first_line(exc, 200)}") from None
        model.eval()
        perturb_norms(model)
        perturb_constants(model)
        try:
            scale_logits(model, LOGIT_STD)
        except CannotShrinkError:
            raise
        except Exception as exc:
            raise CannotShrinkError(f"transformers cannot run the shrunk model: {type(exc).__name__}: "
                                    f"{first_line(exc, 200)}") from None
    finally:
        torch.random.set_rng_state(state)
    return model


def perturb_constants(model) -> list[str]:
    """Give every parameter transformers initializes to one constant (zero biases, zero gates, unit
    scales) seeded noise, as training would: a path that drops a bias, a gate or a per-key mask
    term then changes the logits instead of hiding behind zeros. Returns the names changed."""
    import torch

    changed = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.numel() == 0 or not param.dtype.is_floating_point:
                continue
            first = param.reshape(-1)[0]
            if bool((param == first).all()):
                std = CONSTANT_NOISE * (abs(float(first)) or 1.0)
                param.add_(torch.randn_like(param) * std)
                changed.append(name)
    return changed


def sample_ids() -> list[int]:
    from hfvllm_lab.zoo.tokenizer import build_tokenizer

    return build_tokenizer()("The quick brown fox jumps over the lazy dog.")["input_ids"]


def scale_logits(model, target_std: float, rounds: int = 4) -> float:
    """Rescale the output embedding until logits on a sample text have std ~target (a tied head
    also rescales the input embedding, so a few rounds). Returns the std reached."""
    import torch

    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise CannotShrinkError(f"{type(model).__name__} has no output embedding to scale")
    ids = torch.tensor([sample_ids()])
    std = float("nan")
    with torch.no_grad():
        for _ in range(rounds):
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            std = logits.std(-1).mean().item()
            if not torch.isfinite(logits).all():
                raise CannotShrinkError("the shrunk model's logits are not finite")
            if std == 0:
                head.weight.normal_(0.0, target_std / head.weight.shape[-1] ** 0.5)
                continue
            if abs(std / target_std - 1) < 0.1:
                break
            head.weight.mul_(target_std / std)
    return std


def write_checkpoint(p: ShrinkPlan, directory: Path) -> None:
    from hfvllm_lab.zoo.tokenizer import save_tokenizer

    model = build_model(p)
    model.config.architectures = [type(model).__name__]
    try:
        model.save_pretrained(str(directory))
    except Exception as exc:
        raise CannotShrinkError(f"save_pretrained failed: {type(exc).__name__}: {first_line(exc, 200)}") from None
    save_tokenizer(directory)
    (directory / "shrink.json").write_text(json.dumps({
        "model_type": p.model_type, "class": p.class_name, "digest": p.digest(), "kept_layers": p.kept_layers,
        "changes": p.changes, "seed": seed_of(p.model_type), "version": SHRINK_VERSION,
    }, indent=1, default=str))
