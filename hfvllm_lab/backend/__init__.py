"""The lab's Transformers modeling backend for vLLM (vLLM is imported only when used)."""

from hfvllm_lab.backend.register import ARCH, ARCH_HYBRID, register, register_in_process

__all__ = ["ARCH", "ARCH_HYBRID", "register", "register_in_process"]
