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
