"""Up-front checks of what a Session is asked for: prompts, token counts, device memory, the engine's
device kind. Each refuses with the cause before anything is built or closed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfvllm_lab.errors import DeviceError, InputError

if TYPE_CHECKING:
    from hfvllm_lab.paths.vllm_path import EngineSettings
    from hfvllm_lab.session import Session


def check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts or [])
    if not prompts:
        raise InputError("prompts is empty: pass at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str) or not p]
    if bad:
        raise InputError(f"every prompt must be a non-empty string; got {bad[:3]!r}")
    return prompts


def check_max_tokens(max_tokens: int) -> int:
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise InputError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    return max_tokens


def check_memory(config, settings: "EngineSettings", others: list["Session"]) -> None:
    """Refuse, before any older Session is closed, an engine that cannot fit even after they are."""
    from hfvllm_lab.device import free_device_bytes
    from hfvllm_lab.paths.vllm_path import estimated_engine_bytes

    need = estimated_engine_bytes(config, settings)
    free = free_device_bytes(settings.device)
    freed = 0
    for other in others:
        memory = other.memory
        kv, before = memory.phase("kv_cache"), memory.phase("before")
        if kv is not None and before is not None and kv.process_bytes and before.process_bytes:
            freed += max(kv.process_bytes - before.process_bytes, 0)
    if need > free + freed:
        raise DeviceError(
            f"too little memory on {settings.device}: the engine needs ~{need >> 20} MiB (parameters + a KV cache for "
            f"{settings.max_num_seqs} x {settings.max_model_len} tokens), {free >> 20} MiB are free"
            + (f" and closing the open Session would free ~{freed >> 20} MiB" if others else "")
            + "; lower max_num_seqs / max_model_len or use a smaller dtype"
        )


def vllm_device_type() -> str:
    from vllm.platforms import current_platform

    return current_platform.device_type
