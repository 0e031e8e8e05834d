"""Make the lab backend known to vLLM: in-process, and as a `vllm.general_plugins` entry point."""

from __future__ import annotations

# The architecture names to pass as `hf_overrides={"architectures": [...]}`: the plain class, and the
# hybrid one for models whose modules keep state between tokens outside attention (vLLM reads
# `is_hybrid` from the class, so each needs its own name).
ARCH = "HfvllmLabForCausalLM"
ARCH_HYBRID = "HfvllmLabHybridForCausalLM"
CLASS_PATH = "hfvllm_lab.backend.model:LabForCausalLM"
HYBRID_CLASS_PATH = "hfvllm_lab.backend.model:LabHybridForCausalLM"


def register() -> None:
    """Entry point for vLLM's plugin loader (every vLLM process, `vllm serve` included).

    Registers lazily by import path and leaves an in-process registration of the class alone,
    so the plugin loader running inside `LLM()` does not replace it.
    """
    from vllm import ModelRegistry

    for arch, path in ((ARCH, CLASS_PATH), (ARCH_HYBRID, HYBRID_CLASS_PATH)):
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, path)


def register_in_process() -> None:
    """Register the class objects themselves (no inspection subprocess); call before creating an LLM."""
    from vllm import ModelRegistry

    from hfvllm_lab.backend.model import LabForCausalLM, LabHybridForCausalLM

    ModelRegistry.register_model(ARCH, LabForCausalLM)
    ModelRegistry.register_model(ARCH_HYBRID, LabHybridForCausalLM)
