"""One place for device choice, synchronisation, timers and memory figures, per device type.

Built on torch's device-generic API (`torch.accelerator`, `torch.get_device_module`) so that
Cambricon's `mlu` (registered by torch_mlu as a PrivateUse1 backend) works like `cuda`. Nothing
here is MLU-specific beyond importing torch_mlu when it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass

from hfvllm_lab.errors import DeviceError

KINDS = ("auto", "mlu", "cuda", "cpu")


def _import_torch_mlu() -> bool:
    """Import torch_mlu if installed (it registers the `mlu` device); False when absent."""
    if importlib.util.find_spec("torch_mlu") is None:
        return False
    import torch_mlu  # noqa: F401

    return True


def available_kinds() -> list[str]:
    """Device types usable in this process, in the order `auto` prefers them."""
    import torch

    kinds = []
    if _import_torch_mlu() and getattr(torch, "mlu", None) is not None and torch.mlu.is_available():
        kinds.append("mlu")
    if torch.cuda.is_available():
        kinds.append("cuda")
    kinds.append("cpu")
    return kinds


def resolve_device(requested: str = "auto", available: list[str] | None = None) -> str:
    """`auto` -> MLU, else CUDA, else CPU; an explicit kind must be present."""
    requested = (requested or "auto").lower()
    kind = requested.split(":", 1)[0]
    if kind not in KINDS:
        raise DeviceError(f"unsupported device {requested!r}: choose one of {', '.join(KINDS)}")
    available = available_kinds() if available is None else available
    if kind == "auto":
        return available[0]
    if kind not in available:
        hint = " (torch_mlu is not installed)" if kind == "mlu" and importlib.util.find_spec("torch_mlu") is None else ""
        raise DeviceError(f"device {requested!r} is not available here{hint}; available: {', '.join(available)}")
    return requested


_DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16"}


def resolve_dtype(dtype: str | None, device: str) -> str:
    """Canonical dtype name; the default is float32 on the CPU and bfloat16 on accelerators."""
    if dtype is None or dtype == "auto":
        return "float32" if device.startswith("cpu") else "bfloat16"
    name = _DTYPES.get(str(dtype).removeprefix("torch.").lower())
    if name is None:
        raise DeviceError(f"unsupported dtype {dtype!r}: choose float32, bfloat16 or float16")
    if device.startswith("cpu") and name == "float16":
        raise DeviceError("float16 is not supported by vLLM's CPU backend; use float32 or bfloat16")
    return name


def checkpoint_dtype(config) -> str | None:
    """The dtype a checkpoint's config declares (`dtype`, or the older `torch_dtype`), canonical."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for holder in (config, text):
        for key in ("dtype", "torch_dtype"):
            value = getattr(holder, key, None)
            if value is not None:
                name = _DTYPES.get(str(value).removeprefix("torch.").lower())
                if name is not None:
                    return name
    return None


def choose_dtype(requested: str | None, device: str, declared: str | None) -> tuple[str, str]:
    """(dtype, why). `None`/"auto" follows the checkpoint's declared dtype where the device runs
    it; an explicit dtype is checked and kept."""
    if requested not in (None, "auto"):
        return resolve_dtype(requested, device), "requested"
    if declared is None:
        fallback = resolve_dtype(None, device)
        return fallback, f"auto: the checkpoint declares no dtype; {fallback} is the default on {device}"
    if declared == "float16" and device.startswith("cpu"):
        return "float32", "auto: the checkpoint is float16, which vLLM's CPU backend does not run; float32 holds it exactly"
    return declared, f"auto: the checkpoint's config declares {declared}"


def is_accelerator(device: str) -> bool:
    return not device.startswith("cpu")


def free_device_bytes(device: str) -> int:
    """Memory a new allocation can still get: the device's free memory, or available RAM on the CPU."""
    if is_accelerator(device):
        import torch

        return torch.accelerator.get_memory_info()[0]
    import psutil

    return psutil.virtual_memory().available


def synchronize(device: str) -> None:
    if is_accelerator(device):
        import torch

        torch.accelerator.synchronize()


@dataclass(frozen=True)
class MemoryFigure:
    """A memory reading with its source named: 'allocator' on accelerators, 'rss' on the CPU."""

    bytes: int
    source: str
    peak_bytes: int | None = None


def memory_figure(device: str) -> MemoryFigure:
    if is_accelerator(device):
        import torch

        torch.accelerator.synchronize()
        return MemoryFigure(
            torch.accelerator.memory_allocated(), "allocator", torch.accelerator.max_memory_allocated()
        )
    return MemoryFigure(process_rss(), "rss")


def process_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc, psutil elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


class StepTimer:
    """Times regions of one step: device events on accelerators (read after one synchronisation
    per step), perf_counter on the CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.accelerated = is_accelerator(device)
        self._open: dict[str, object] = {}
        self._pairs: list[tuple[str, object, object]] = []

    def start(self, key: str) -> None:
        self._open[key] = self._mark()

    def is_open(self, key: str) -> bool:
        return key in self._open

    def stop(self, key: str) -> None:
        begin = self._open.pop(key)
        self._pairs.append((key, begin, self._mark()))

    def _mark(self):
        if self.accelerated:
            import torch

            event = torch.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def collect(self) -> list[tuple[str, float]]:
        """(key, seconds) for each closed region; synchronises once on accelerators."""
        if self.accelerated and self._pairs:
            self._pairs[-1][2].synchronize()
            out = [(k, b.elapsed_time(e) / 1000.0) for k, b, e in self._pairs]
        else:
            out = [(k, e - b) for k, b, e in self._pairs]
        self._pairs.clear()
        return out


def empty_cache(device: str) -> None:
    if is_accelerator(device):
        import torch

        torch.accelerator.empty_cache() if hasattr(torch.accelerator, "empty_cache") else torch.accelerator.memory.empty_cache()
