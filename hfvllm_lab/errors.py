"""The project's own exceptions: each names its cause so a notebook user can act on it."""

from __future__ import annotations


class LabError(Exception):
    """Base class for every error hfvllm_lab raises on purpose."""


class ModelNotFoundError(LabError):
    """A checkpoint path that does not exist, or a zoo name that is not in the zoo."""


class UnsupportedModelError(LabError):
    """A model the lab backend refuses to build, with the reason."""


class WeightsError(LabError):
    """Missing or unexpected weights in a checkpoint."""


class AttentionPathError(LabError):
    """An attention path that cannot run correctly where it was asked for."""


class DeviceError(LabError):
    """An unsupported device, or a dtype the device cannot run."""


class InputError(LabError):
    """Bad arguments: empty prompts, max_tokens < 1, and the like."""


class ProbeUnavailableError(LabError):
    """A probe that cannot apply to this backend or model, with the reason."""
