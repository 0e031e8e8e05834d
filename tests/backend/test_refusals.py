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


def meta_causal_lm(model_type: str, **config):
    import torch
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    cfg = AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)](cfg)


@pytest.mark.parametrize(("model_type", "head", "plan"), [
    ("roberta", "lm_head.decoder", ((), "lm_head", ("decoder",))),  # dense -> gelu -> layer_norm -> decoder
    ("bert", "cls.predictions.decoder", ((), "cls", ("predictions", "decoder"))),  # nested transform
    ("electra", "generator_lm_head", (("generator_predictions",), None, ())),  # applied by the causal LM
    ("modernbert-decoder", "decoder", (("lm_head",), None, ())),  # `self.decoder(self.lm_head(h))`
    ("bert-generation", "lm_head.decoder", None),  # its head container holds only the output embedding
])
def test_head_transforms_run_as_hf_code(model_type, head, plan):
    """What an encoder-style head computes before its output embedding is planned as HF code for
    compute_logits (backend/head_transform.py), not refused."""
    from hfvllm_lab.backend.model import check_head

    got = check_head(meta_causal_lm(model_type, is_decoder=True), head)
    assert (None if got is None else (got.before, got.container, got.path)) == plan


def test_a_head_transform_that_mixes_tokens_is_refused():
    """vLLM computes logits only for the tokens it samples from: a transform must act on each token alone."""
    from torch import nn

    from hfvllm_lab.backend.model import check_head

    model = meta_causal_lm("roberta", is_decoder=True)
    model.lm_head.dense = nn.Conv1d(2, 2, 3, device="meta")
    with pytest.raises(UnsupportedModelError, match=r"lm_head\.dense \(Conv1d\).*acts on each token alone"):
        check_head(model, "lm_head.decoder")


def test_a_function_applied_before_the_head_is_refused():
    import torch
    from transformers import LlamaForCausalLM

    from hfvllm_lab.backend.model import check_logits_postprocessing

    class TanhBeforeHead(LlamaForCausalLM):
        def forward(self, input_ids=None, **kwargs):
            hidden_states = self.model(input_ids).last_hidden_state
            return self.lm_head(torch.tanh(hidden_states))

    with pytest.raises(UnsupportedModelError, match=r"applies more than its head to the hidden states"):
        check_logits_postprocessing(TanhBeforeHead, "lm_head")


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


class _Renormalised:
    """A causal-LM forward doing to its logits what vLLM's logits processor would not repeat."""

    def forward(self, input_ids):
        outputs = self.model(input_ids)
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states)
        logits = logits - logits.logsumexp(-1, keepdim=True) * self.temperature_mix
        return logits


def test_logit_postprocessing_outside_the_allowlist_is_refused():
    """(Falcon-H1's muP `* self.model.lm_head_multiplier` is allowlisted now: a scale vLLM repeats.)"""
    from hfvllm_lab.backend.model import check_logits_postprocessing

    with pytest.raises(UnsupportedModelError, match=r"post-processes the logits .*temperature_mix"):
        check_logits_postprocessing(_Renormalised, "lm_head")


CAP = ("cap", "config.final_logit_softcapping")


@pytest.mark.parametrize(("model_type", "steps"), [
    ("llama", []), ("opt", []), ("gpt_neox", []), ("qwen2_moe", []),
    ("gemma2", [CAP, ("cap", ""), CAP]),
    ("granite", [("div", "config.logits_scaling")]),
    ("cohere", [("mul", "logit_scale")]),
    ("hyperclovax", [("mul", "config.logits_scaling")]),  # multiplies where Granite divides
])
def test_allowlisted_logit_maths_passes_with_its_steps(model_type, steps):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from hfvllm_lab.backend.model import check_logits_postprocessing

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model(model_type))]
    assert check_logits_postprocessing(cls, "lm_head") == steps


def test_logit_maths_follows_the_steps_and_vllms_order():
    from types import SimpleNamespace

    from hfvllm_lab.backend.model import logit_maths

    owner = SimpleNamespace(config=SimpleNamespace(logits_scaling=4.0, final_logit_softcapping=30.0), logit_scale=0.5)
    assert logit_maths("M", [("mul", "config.logits_scaling")], owner, False)["scale"] == 4.0
    assert logit_maths("M", [("div", "config.logits_scaling")], owner, True)["scale"] == 0.25
    capped = logit_maths("M", [CAP, ("cap", ""), CAP, ("mul", "logit_scale")], owner, False)
    assert (capped["soft_cap"], capped["scale"]) == (30.0, 0.5)
    with pytest.raises(UnsupportedModelError, match="soft-caps its logits after scaling"):
        logit_maths("M", [("mul", "logit_scale"), CAP], owner, False)
    with pytest.raises(UnsupportedModelError, match="before a head with a bias"):
        logit_maths("M", [("hidden-div", "config.logits_scaling")], owner, True)
    owner.config.final_logit_softcapping = None  # the forward's `if` skips the cap
    assert logit_maths("M", [CAP, ("cap", ""), CAP], owner, False)["soft_cap"] is None


def test_compatibility_follows_vllms_rule():
    """Accepted when is_backend_compatible() or _can_set_attn_implementation() holds (stablelm,
    biogpt lack the flag but dispatch through the interface); refused when neither does (bloom)."""
    from transformers import BioGptForCausalLM, BloomForCausalLM, StableLmForCausalLM

    from hfvllm_lab.backend.model import check_supported

    check_supported(StableLmForCausalLM)
    check_supported(BioGptForCausalLM)
    with pytest.raises(UnsupportedModelError, match="does not support custom attention backends"):
        check_supported(BloomForCausalLM)


def test_a_module_keeping_state_outside_attention_needs_the_hybrid_class():
    """Zaya's CCA q/k/v projection convolves over earlier tokens through the HF cache: with
    use_cache=False the prefill is right and every decode step wrong (the coverage sweep once saw
    identical tokens with logprobs 0.44 off). The plain class refuses it, naming the module and the
    class that gives its state a slot in vLLM's state cache (the Session picks that one itself)."""
    from transformers import AutoConfig

    from hfvllm_lab.backend.model import check_stateless
    from hfvllm_lab.backend.state import _meta_model
    from hfvllm_lab.zoo import shrink

    hf = _meta_model(AutoConfig.from_pretrained(shrink.shrunk_path("zaya")), False)
    with pytest.raises(UnsupportedModelError, match=r"qkv_proj \(ZayaCCAProjection\) takes the HF cache .*"
                                                    r"HfvllmLabHybridForCausalLM"):
        check_stateless(hf)


def test_llama_layers_only_hand_the_cache_to_attention():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfvllm_lab.backend.model import check_stateless

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=260, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64))
    check_stateless(model)  # decoder layers and the base model pass the cache down: not state of their own


def test_differential_attention_calling_the_interface_twice_is_refused():
    """DiffLlama calls the attention function once per value half: one vLLM layer caches one pair."""
    from hfvllm_lab.zoo import shrink

    with pytest.raises(UnsupportedModelError, match=r"DiffLlamaAttention\) calls the attention function 2 times"):
        build(shrink.shrunk_path("diffllama"))


def test_hf_model_is_built_from_transformers_own_config_class():
    """vLLM parses kimi_linear with a config class of its own; transformers' model needs its own
    (built from vLLM's, it crashed on a missing attribute)."""
    from vllm.transformers_utils.config import get_config

    from hfvllm_lab.backend.model import transformers_own_config
    from hfvllm_lab.zoo import shrink

    directory = str(shrink.shrunk_path("kimi_linear"))
    theirs = get_config(directory, trust_remote_code=False)
    assert type(theirs).__module__.startswith("vllm.")
    ours = transformers_own_config(theirs, directory, {"lab_probe": 7})
    assert type(ours).__module__.startswith("transformers.models.kimi_linear") and ours.lab_probe == 7
    assert transformers_own_config(ours, directory) is ours
    from hfvllm_lab.backend.state import model_keeps_state

    assert model_keeps_state(directory, theirs, False)  # read through transformers' class, it finds the state


def test_config_vllm_cannot_parse_is_refused_before_the_engine():
    from hfvllm_lab.paths.vllm_path import preflight
    from hfvllm_lab.zoo import shrink

    with pytest.raises(UnsupportedModelError, match=r"vLLM [\d.]+ cannot read this checkpoint's config, though "
                                                    r"transformers can \(ValueError: The `mlp_layer_types`"):
        preflight(engine_settings(shrink.shrunk_path("deepseek_v4")))
