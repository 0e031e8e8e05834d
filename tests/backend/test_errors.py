"""Bad checkpoints raise the project's own errors, naming the cause; the process stays usable."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from hfvllm_lab import zoo
from hfvllm_lab.errors import ModelNotFoundError, UnsupportedModelError, WeightsError
from tests.conftest import engine_settings


def copy_checkpoint(name, target):
    shutil.copytree(zoo.path(name), target)
    return target


def build(model_dir, **kw):
    from hfvllm_lab.paths.vllm_path import VllmPath

    return VllmPath(engine_settings(model_dir, **kw))


def test_missing_weight_is_named(tmp_path):
    ckpt = copy_checkpoint("llama", tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"missing from the checkpoint: hf\.model\.layers\.1\.mlp\.down_proj\.weight"):
        build(ckpt)


def test_unexpected_weight_is_named(tmp_path):
    ckpt = copy_checkpoint("llama", tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.layers.0.mlp.extra_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].clone()
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"unexpected in the checkpoint: model\.layers\.0\.mlp\.extra_proj\.weight"):
        build(ckpt)


def test_class_without_attention_backend_support_is_refused(tmp_path):
    from transformers import BloomConfig, BloomForCausalLM

    ckpt = tmp_path / "bloom"
    config = BloomConfig(vocab_size=260, hidden_size=64, n_layer=1, n_head=2)
    BloomForCausalLM(config).save_pretrained(ckpt)
    shutil.copy(zoo.path("llama") / "tokenizer.json", ckpt)
    shutil.copy(zoo.path("llama") / "tokenizer_config.json", ckpt)
    with pytest.raises(UnsupportedModelError, match="BloomForCausalLM does not support custom attention backends"):
        build(ckpt)


def test_remote_code_needs_opt_in(tmp_path):
    ckpt = copy_checkpoint("llama", tmp_path / "remote")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="trust_remote_code=True"):
        build(ckpt)


def test_nonexistent_checkpoint_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no checkpoint at"):
        zoo.resolve(str(tmp_path / "missing"))


def test_a_second_engine_starts_after_the_first_is_closed(prompts):
    first = build(zoo.path("llama"))
    a = first.generate(prompts[:1], 4)
    first.close()
    assert first.closed
    second = build(zoo.path("llama"))
    try:
        b = second.generate(prompts[:1], 4)
    finally:
        second.close()
    assert a[0].token_ids == b[0].token_ids and len(b[0].token_ids) == 4


def test_batch_dependent_rope_is_refused(tmp_path):
    ckpt = copy_checkpoint("llama", tmp_path / "dynamic")
    config = json.loads((ckpt / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="'dynamic' derives its frequencies"):
        build(ckpt)
