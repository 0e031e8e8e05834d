"""hfvllm_lab: see what vLLM's layers do to a HuggingFace causal LM."""

from __future__ import annotations

from hfvllm_lab.errors import (
    AttentionPathError,
    DeviceError,
    InputError,
    LabError,
    ModelNotFoundError,
    ProbeUnavailableError,
    UnsupportedModelError,
    WeightsError,
)

__version__ = "0.1.0"

__all__ = [
    "Session",
    "AttentionPathError",
    "DeviceError",
    "InputError",
    "LabError",
    "ModelNotFoundError",
    "ProbeUnavailableError",
    "UnsupportedModelError",
    "WeightsError",
]


def __getattr__(name: str):
    # Session pulls in the paths and results; import it only when asked for.
    if name == "Session":
        from hfvllm_lab.session import Session

        return Session
    raise AttributeError(f"module 'hfvllm_lab' has no attribute {name!r}")
