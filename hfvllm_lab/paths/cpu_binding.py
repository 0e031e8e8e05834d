"""Which cores each CPU worker's OpenMP threads bind to when an engine has several ranks on the CPU."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

VAR = "VLLM_CPU_OMP_THREADS_BIND"


@dataclass(frozen=True)
class CpuBinding:
    """The value the engine starts with (None: leave vLLM's own) and one line saying why."""

    value: str | None
    note: str


def allowed_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def numa_nodes() -> int:
    """NUMA nodes this process may allocate on (vLLM's own reading), 1 where it cannot tell."""
    try:
        from vllm.utils.cpu_resource_utils import get_visible_memory_node

        return max(1, len(get_visible_memory_node()))
    except Exception:  # noqa: BLE001 - platforms without the reading: one node
        return 1


def split_cores(cores: list[int], ranks: int) -> list[list[int]]:
    """Contiguous, equal groups of cores, one per rank; with fewer cores than ranks, ranks share cores
    round-robin (correct, and slower: two ranks' threads then take turns on one core)."""
    if len(cores) >= ranks:
        size = len(cores) // ranks
        return [cores[i * size:(i + 1) * size] for i in range(ranks)]
    return [[cores[i % len(cores)]] for i in range(ranks)]


def plan_binding(local_ranks: int, device: str) -> CpuBinding:
    """vLLM's default ("auto") gives each CPU worker a NUMA node of its own and refuses when there are
    fewer nodes than workers, which is most single-socket machines. The Session then splits the allowed
    cores between the workers itself; a value the user set is kept."""
    if not device.startswith("cpu") or local_ranks <= 1:
        return CpuBinding(None, "")
    user = os.environ.get(VAR)
    if user and user != "auto":
        return CpuBinding(None, f"{VAR}={user!r} (yours, kept)")
    nodes = numa_nodes()
    if nodes >= local_ranks:
        return CpuBinding(None, f"{VAR}=auto (vLLM's: one of {nodes} NUMA nodes per worker)")
    cores = allowed_cores()
    groups = split_cores(cores, local_ranks)
    value = "|".join(",".join(map(str, g)) for g in groups)
    shared = " (fewer cores than workers: workers share cores, which is slower)" if len(cores) < local_ranks else ""
    return CpuBinding(value, f"{VAR}={value!r} set by the Session: {nodes} NUMA node(s) for {local_ranks} CPU workers, "
                             f"so the {len(cores)} allowed cores are split between them{shared}")


@contextlib.contextmanager
def bound_threads(binding: CpuBinding):
    """The binding in the environment while an engine starts its workers (they inherit it), the previous
    value back afterwards; vLLM caches its environment after an engine starts, so the cache is dropped."""
    if binding.value is None:
        _drop_env_cache()  # a value the user set after an earlier engine started must be read afresh
        yield
        return
    previous = os.environ.get(VAR)
    os.environ[VAR] = binding.value
    _drop_env_cache()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(VAR, None)
        else:
            os.environ[VAR] = previous
        _drop_env_cache()


def _drop_env_cache() -> None:
    import vllm.envs as envs

    if hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()


__all__ = ["CpuBinding", "VAR", "bound_threads", "plan_binding", "split_cores"]
