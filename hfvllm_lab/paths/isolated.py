"""Engines of their own in child processes: a job run on a fresh engine there, the Session's
edits carried along, and vLLM native as a noise floor. Two engines cannot share one process (closing
one tears down the distributed groups the other uses), so every reference engine runs this way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hfvllm_lab.paths.vllm_path import EngineSettings, VllmPath, has_native_class


def _on_fresh_engine(settings: EngineSettings, job: Callable, args: tuple, edits: bytes | None,
                     env: dict[str, str] | None = None):
    import os

    os.environ.update(env or {})
    with VllmPath(settings) as path:
        notes = apply_edits(path, edits) if edits else []
        return job(path, *args), notes


def run_isolated(settings: EngineSettings, job: Callable, *args, edits: bytes | None = None,
                 env: dict[str, str] | None = None):
    """`job(path, *args)` on an engine of its own in a child process (two engines cannot share
    this process: closing one tears down the distributed groups the other uses). `job` is a module-level
    function; `edits` (`pickled_edits`) are applied to the child's model first; `env` is set in the child
    before its engine starts. Returns (what the job returned, notes on edits that could not be applied)."""
    from hfvllm_lab.paths.spawn import run_in_engine_child

    return run_in_engine_child(_on_fresh_engine, settings, job, args, edits, env)


def pickled_edits(edits: list[Callable]) -> tuple[bytes | None, str]:
    """A Session's apply_model edits for a child engine (cloudpickle carries lambdas and closures), or
    why they cannot travel."""
    if not edits:
        return None, ""
    import cloudpickle

    try:
        return cloudpickle.dumps(list(edits)), ""
    except Exception as exc:  # noqa: BLE001 - the reason is reported
        return None, f"the Session's edits could not be sent to a child engine ({type(exc).__name__}: {exc})"


def apply_edits(path: VllmPath, edits: bytes) -> list[str]:
    """Apply pickled edits to a child engine's model; notes for those that fail on this model class."""
    import cloudpickle

    notes = []
    for i, fn in enumerate(cloudpickle.loads(edits)):
        try:
            path.apply_model(fn, track=False)
        except Exception as exc:  # noqa: BLE001 - another backend's modules may not have what an edit needs
            notes.append(f"edit {i} ({getattr(fn, '__name__', 'fn')}) not applied: {type(exc).__name__}: {exc}"[:240])
    return notes


def native_floor_settings(settings: EngineSettings, wanted: bool | None, notes: list[str],
                          role: str = "the path under test") -> EngineSettings | None:
    """Settings of a child engine running vLLM's native class as a noise floor (the Session's, with its
    engine arguments dropped but vLLM's own head_dtype, so the floor computes the head as the judged
    engine does), or None with the reason added to `notes`."""
    from transformers import AutoConfig

    if wanted is False:
        notes.append("vLLM native floor not measured (native_floor=False)")
        return None
    if settings.backend == "native":
        notes.append(f"vLLM native is {role}, so it is not also a floor")
        return None
    config = AutoConfig.from_pretrained(settings.model_dir, trust_remote_code=settings.trust_remote_code)
    if not has_native_class(config):
        notes.append(f"vLLM has no native class for {', '.join(config.architectures or ['?'])}: "
                     "the floor is transformers' own rounding only")
        return None
    head = (settings.extra.get("hf_overrides") or {}) if isinstance(settings.extra.get("hf_overrides"), dict) else {}
    extra = {"hf_overrides": {"head_dtype": head["head_dtype"]}} if "head_dtype" in head else {}
    return replace(settings, backend="native", tensor_parallel_size=1, extra=extra)
