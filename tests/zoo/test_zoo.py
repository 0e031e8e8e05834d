import json

import pytest
import torch
from safetensors.torch import load_file

from hfvllm_lab import zoo
from hfvllm_lab.errors import ModelNotFoundError
from hfvllm_lab.zoo.build import build_model, saved_state_dict


def test_zoo_has_the_required_families():
    types = {zoo.spec(n).model_type for n in zoo.names()}
    assert {"llama", "qwen3", "gemma", "gemma2"} <= types
    assert zoo.DEFAULT == "llama"


@pytest.mark.parametrize("name", zoo.names())
def test_checkpoint_is_complete_and_matches_its_seeded_build(name):
    directory = zoo.path(name)
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == zoo.spec(name).model_type
    saved = load_file(directory / "model.safetensors")
    rebuilt = saved_state_dict(build_model(zoo.spec(name)))  # as save_pretrained writes it
    for key, tensor in saved.items():
        assert torch.equal(tensor, rebuilt[key]), key


def test_builds_are_deterministic_and_seeds_differ():
    a = build_model(zoo.spec("llama")).state_dict()
    b = build_model(zoo.spec("llama")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    mistral = build_model(zoo.spec("mistral")).state_dict()
    assert not torch.equal(a["model.embed_tokens.weight"], mistral["model.embed_tokens.weight"])


def test_head_sizes_are_supported_by_vllm_cpu_attention():
    for name in zoo.names():
        assert zoo.spec(name).config_kwargs()["head_dim"] in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def test_missing_checkpoint_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("HFVLLM_LAB_CACHE", str(tmp_path))
    first = zoo.path("gemma")
    (first / "model.safetensors").unlink()
    again = zoo.path("gemma")
    assert again == first and (again / "model.safetensors").is_file()


def test_tokenizer_round_trips_any_text_and_adds_bos():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.path("llama"))
    text = "Hello, wörld! 你好 \t\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id == 256
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok) == zoo.spec("llama").config_kwargs()["vocab_size"]


def test_logits_are_spread_for_meaningful_topk_checks():
    model = build_model(zoo.spec("qwen3"))
    with torch.no_grad():
        logits = model(torch.tensor([[256, 72, 101, 108, 108, 111]])).logits
    assert 1.0 < logits.std().item() < 4.0


def test_resolve_names_paths_and_errors(tmp_path):
    assert zoo.resolve(None) == zoo.path("llama")
    assert zoo.resolve("qwen3") == zoo.path("qwen3")
    assert zoo.resolve(str(zoo.path("qwen3"))) == zoo.path("qwen3")
    with pytest.raises(ModelNotFoundError, match="not a zoo name"):
        zoo.resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        zoo.resolve(tmp_path)
