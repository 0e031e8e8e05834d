"""Models the lab would compute wrong are refused before any engine serves a token, with the reason."""

from __future__ import annotations

import shutil

import pytest

from hfvllm_lab import zoo
from hfvllm_lab.errors import UnsupportedModelError
from tests.conftest import engine_settings


def save(model, target):
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(zoo.path("llama") / name, target)
    return target


def build(model_dir):
    from hfvllm_lab.paths.vllm_path import VllmPath

    return VllmPath(engine_settings(model_dir))


def tiny_roberta(tmp_path, is_decoder):
    from transformers import RobertaConfig, RobertaForCausalLM

    config = RobertaConfig(vocab_size=260, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, is_decoder=is_decoder, max_position_embeddings=300)
    return save(RobertaForCausalLM(config), tmp_path / f"roberta-{is_decoder}")


def test_bidirectional_attention_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="is_decoder=False"):
        build(tiny_roberta(tmp_path, is_decoder=False))


def test_head_beyond_the_output_embedding_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"lm_head \(RobertaLMHead\) computes more than its output "
                                                     r"embedding lm_head\.decoder \(dense, layer_norm"):
        build(tiny_roberta(tmp_path, is_decoder=True))


def test_non_causal_attention_module_is_refused():
    """is_causal=False on the attention module itself, whatever the config says."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfvllm_lab.backend.attention import attention_spec

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=260, hidden_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64))
    attn = model.model.layers[0].self_attn
    attn.is_causal = False
    with pytest.raises(UnsupportedModelError, match=r"non-causal \(bidirectional\) attention"):
        attention_spec("model.layers.0.self_attn", attn, model.config, 0, 1, "hf.model.layers.0.self_attn")


@pytest.mark.parametrize(("model_type", "match"), [
    ("hyperclovax", r"post-processes the logits \(`logits = self.lm_head\(.*\) \* self.config.logits_scaling`\)"),
    ("falcon_h1", r"post-processes the logits .*lm_head_multiplier"),
    ("electra", r"applies more than its head to the hidden states"),
])
def test_logit_postprocessing_outside_the_allowlist_is_refused(model_type, match):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from hfvllm_lab.backend.model import check_logits_postprocessing

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model(model_type))]
    head = "generator_lm_head" if model_type == "electra" else "lm_head"
    with pytest.raises(UnsupportedModelError, match=match):
        check_logits_postprocessing(cls, head)


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "granite", "cohere", "opt", "gpt_neox", "qwen2_moe"])
def test_allowlisted_logit_maths_passes(model_type):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from hfvllm_lab.backend.model import check_logits_postprocessing

    check_logits_postprocessing(MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model(model_type))], "lm_head")


def test_compatibility_follows_vllms_rule():
    """Accepted when is_backend_compatible() or _can_set_attn_implementation() holds (stablelm,
    biogpt lack the flag but dispatch through the interface); refused when neither does (bloom)."""
    from transformers import BioGptForCausalLM, BloomForCausalLM, StableLmForCausalLM

    from hfvllm_lab.backend.model import check_supported

    check_supported(StableLmForCausalLM)
    check_supported(BioGptForCausalLM)
    with pytest.raises(UnsupportedModelError, match="does not support custom attention backends"):
        check_supported(BloomForCausalLM)


def test_a_module_keeping_state_outside_attention_is_refused(tmp_path):
    """Zaya's CCA q/k/v projection convolves over earlier tokens through the HF cache: with
    use_cache=False the prefill is right and every decode step wrong (the coverage sweep saw
    identical tokens with logprobs 0.44 off). The engine must refuse it, naming the module."""
    from hfvllm_lab.zoo import shrink

    with pytest.raises(UnsupportedModelError, match=r"qkv_proj \(ZayaCCAProjection\) takes the HF cache"):
        build(shrink.shrunk_path("zaya"))


def test_llama_layers_only_hand_the_cache_to_attention():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfvllm_lab.backend.model import check_stateless

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=260, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64))
    check_stateless(model)  # decoder layers and the base model pass the cache down: not state of their own
