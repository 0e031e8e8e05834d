"""Make the lab backend known to vLLM: in-process, and as a `vllm.general_plugins` entry point."""

from __future__ import annotations

# The architecture name to pass as `hf_overrides={"architectures": [ARCH]}`.
ARCH = "HfvllmLabForCausalLM"
CLASS_PATH = "hfvllm_lab.backend.model:LabForCausalLM"


def register() -> None:
    """Entry point for vLLM's plugin loader (every vLLM process, `vllm serve` included).

    Registers lazily by import path and leaves an in-process registration of the class alone,
    so the plugin loader running inside `LLM()` does not replace it.
    """
    from vllm import ModelRegistry

    if ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCH, CLASS_PATH)


def register_in_process() -> None:
    """Register the class object itself (no inspection subprocess); call before creating an LLM."""
    from vllm import ModelRegistry

    from hfvllm_lab.backend.model import LabForCausalLM

    ModelRegistry.register_model(ARCH, LabForCausalLM)
