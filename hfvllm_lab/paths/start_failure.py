"""Why an engine did not start: the model (the lab could not build it) or the engine's setup (workers,
thread binding, executor), told apart from where the failure was raised."""

from __future__ import annotations

import traceback

from hfvllm_lab.errors import EngineSetupError, UnsupportedModelError, first_line, root_cause

# Source files whose failures are the engine's setup, not the model: executors, process groups, binding.
SETUP_SOURCES = ("vllm/utils/ompmultiprocessing", "vllm/v1/executor/", "vllm/distributed/", "vllm/executor/",
                 "vllm/utils/cpu_resource_utils", "/ray/")
# Worker processes report only that they failed; their tracebacks go to the log.
WORKER_FAILED = "WorkerProc initialization failed"


def start_failure(exc: BaseException, settings) -> Exception:
    root = root_cause(exc)
    frames = traceback.extract_tb(root.__traceback__) if root.__traceback__ else []
    where = frames[-1].filename if frames else ""
    model_frames = any("model_executor/model" in f.filename or "/hfvllm_lab/backend/" in f.filename for f in frames)
    layout = settings.layout
    parallel = f"{layout.describe()}, {settings.distributed_executor_backend or 'mp'} executor" if layout.world > 1 \
        else "one rank"
    reason = f"{type(root).__name__}: {first_line(root, 400)}"
    if WORKER_FAILED in str(exc) or WORKER_FAILED in str(root):
        return EngineSetupError(
            f"a worker process of vLLM's engine failed during start-up ({parallel}): in its own setup or while "
            f"building or loading the model there. Its traceback is in the log above (VLLM_LOGGING_LEVEL=INFO shows "
            f"more); the checks made before start-up passed. {reason}")
    if not model_frames and any(s in where for s in SETUP_SOURCES):
        hint = ""
        if "NUMA" in str(root):
            hint = (" Set VLLM_CPU_OMP_THREADS_BIND to one core list per worker, e.g. '0|1' for two workers "
                    "(the Session sets it when it starts the engine).")
        return EngineSetupError(f"vLLM's engine setup failed before the model was built ({parallel}): {reason}.{hint}")
    return UnsupportedModelError(f"vLLM could not build {settings.model_dir.name} with the {settings.backend} "
                                 f"backend: {type(exc).__name__}: {exc}")


__all__ = ["start_failure"]
