"""vLLM's Ray executor from a Session: the optional `ray` extra, where vLLM's platform runs it."""

from __future__ import annotations

import importlib.util
import os

from hfvllm_lab.errors import InputError

EXTRA = "pip install 'hfvllm_lab[ray]'"


def check_ray() -> None:
    """Refuse distributed_executor_backend='ray' up front where it cannot run: a vLLM platform that names no
    Ray device (vLLM would start a Ray instance and only then refuse), or Ray not installed."""
    from vllm.platforms import current_platform

    if not getattr(current_platform, "ray_device_key", ""):
        raise InputError(
            f"distributed_executor_backend='ray': vLLM's {current_platform.device_name} platform does not run the Ray "
            "executor (it names no Ray device for the workers to claim: ray_device_key is empty), so vLLM would start "
            "Ray and then refuse; use distributed_executor_backend='mp' here (Ray runs where vLLM's platform names a "
            "device, e.g. CUDA's 'GPU')")
    if importlib.util.find_spec("ray") is None:
        raise InputError(f"distributed_executor_backend='ray' needs Ray, which is not installed here ({EXTRA}); "
                         "or use distributed_executor_backend='mp', vLLM's multiprocessing executor on this machine")


def cluster_note() -> str:
    """Which Ray cluster an engine joins: the one RAY_ADDRESS names, a running one, or a local one vLLM starts."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return f"Ray executor on the cluster at RAY_ADDRESS={address}"
    return "Ray executor on a local single-node Ray cluster (vLLM starts one, or joins one already running here)"


__all__ = ["EXTRA", "check_ray", "cluster_note"]
