"""hfvllm_lab: see what vLLM's layers do to a HuggingFace causal LM."""

from __future__ import annotations

from hfvllm_lab.errors import (
    AttentionPathError,
    DeviceError,
    InputError,
    LabError,
    ModelNotFoundError,
    UnsupportedModelError,
    WeightsError,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionPathError",
    "DeviceError",
    "InputError",
    "LabError",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "WeightsError",
]
