"""The lab's Transformers modeling backend for vLLM (vLLM is imported only when used)."""

from hfvllm_lab.backend.register import ARCH, register, register_in_process

__all__ = ["ARCH", "register", "register_in_process"]
