"""Process settings the vLLM path needs, applied and checked before vLLM is imported."""

from __future__ import annotations

import importlib.util
import os
import warnings

from hfvllm_lab.errors import LabError


class EnvironmentProblem(LabError):
    """The Python environment has a known trap that would break the run."""


def prepare_vllm_environment() -> None:
    """Keep the engine in this process so the toolkit can reach the model object."""
    current = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if current not in (None, "0"):
        warnings.warn(
            f"VLLM_ENABLE_V1_MULTIPROCESSING={current} overridden to 0: the lab's probes need the "
            "engine in this process",
            stacklevel=3,
        )
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM's start-up chatter buries a notebook's output; set VLLM_LOGGING_LEVEL to see it.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import torch

    if not torch.cuda.is_available():
        # vLLM treats DeepSeek-style model types as MLA and, on CPUs without AMX, sets a 16-token KV
        # block for its own MLA kernel, which its paged attention refuses (multiples of 32); the lab
        # runs MLA layers through paged attention with zero-padded values, so vLLM's MLA path stays off
        # (vLLM reads this once per process; set VLLM_MLA_DISABLE yourself to choose otherwise)
        os.environ.setdefault("VLLM_MLA_DISABLE", "1")
    check_torchvision()


def check_torchvision() -> None:
    """PyPI's torchvision/torchaudio/torchcodec are built for CUDA torch; beside torch+cpu they
    break transformers' image utilities and `from vllm import LLM`. Name the fix."""
    import torch

    if torch.version.cuda is not None or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as exc:
        raise EnvironmentProblem(
            f"torchvision is installed but does not load beside torch {torch.__version__} ({exc}); "
            "PyPI's torchvision/torchaudio/torchcodec are CUDA builds. Fix: "
            "pip uninstall -y torchvision torchaudio torchcodec"
        ) from None
