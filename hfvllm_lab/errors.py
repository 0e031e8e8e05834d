"""The project's own exceptions: each names its cause so a notebook user can act on it."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, clipped: what a one-line reason shows."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0][:limit] if lines else ""


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain of wrappers (vLLM and huggingface_hub re-raise errors)."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


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


class EngineSetupError(LabError):
    """vLLM's engine could not start for a reason of its setup (workers, executor, thread binding), not the model."""
