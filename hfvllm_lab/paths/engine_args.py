"""User engine arguments merged into the Session's own: refused where they would change what runs
or what can be observed behind the Session's back, otherwise applied and recorded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.errors import InputError

# vLLM arguments that a Session parameter owns: passing them as engine_args would make the
# Session's own record (dtype, lengths, TP size, ...) describe an engine that does not exist.
SESSION_OWNED = {
    "model": "the model (Session's first argument)",
    "dtype": "Session(dtype=...)",
    "max_model_len": "Session(max_model_len=...)",
    "max_num_seqs": "Session(max_num_seqs=...)",
    "tensor_parallel_size": "Session(tensor_parallel_size=...)",
    "pipeline_parallel_size": "Session(pipeline_parallel_size=...)",
    "distributed_executor_backend": "Session(distributed_executor_backend=...)",
    "seed": "Session(seed=...)",
    "trust_remote_code": "Session(trust_remote_code=...)",
}
# The implementation each backend asks vLLM for; `model_impl` may only agree with it.
MODEL_IMPL = {"lab": None, "transformers": "transformers", "native": "vllm"}


@dataclass(frozen=True)
class MergedArgs:
    """What goes to `vllm.LLM`, and one line per user argument saying what became of it."""

    kwargs: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def merge_engine_args(own: dict[str, Any], extra: dict[str, Any], *, backend: str, mode: str,
                      lab_arch: str) -> MergedArgs:
    """`own` (the Session's kwargs) with `extra` (the user's engine_args) on top, key by key."""
    kwargs = dict(own)
    notes: list[str] = []
    for key, value in extra.items():
        if key in SESSION_OWNED:
            raise InputError(f"engine_args[{key!r}] is set by the Session: use {SESSION_OWNED[key]}")
        if key == "worker_extension_cls":
            raise InputError("engine_args['worker_extension_cls'] would replace the lab's probes, which run "
                             "as vLLM's worker extension")
        if key == "model_impl":
            _check_model_impl(value, backend)
            kwargs[key] = value
            continue
        if key == "enforce_eager":
            _check_eager(bool(value), mode)
            notes.append(f"enforce_eager={value!r} (what mode={mode!r} sets already)")
            continue
        if key == "logits_processors":  # the user's run beside the lab's decode probe
            kwargs[key] = [*kwargs.get(key, []), *value]
            notes.append(f"logits_processors added after the lab's: {list(value)!r}")
            continue
        if key == "hf_overrides":
            kwargs[key] = _merge_overrides(kwargs.get(key), value, backend, lab_arch)
            notes.append(f"hf_overrides merged: {_describe(value)}"
                         + (f" (architectures kept: {lab_arch})" if backend == "lab" else ""))
            continue
        if key in kwargs and kwargs[key] != value:
            notes.append(f"{key}={value!r} (the Session's default was {kwargs[key]!r})")
        else:
            notes.append(f"{key}={value!r}")
        kwargs[key] = value
    return MergedArgs(kwargs, notes)


def _check_model_impl(value: Any, backend: str) -> None:
    wanted = MODEL_IMPL[backend]
    if wanted is None:
        raise InputError(
            f"engine_args['model_impl']={value!r} on backend='lab': the lab backend is selected through "
            "hf_overrides' architecture, and model_impl would make vLLM build one of its own implementations "
            "(use backend='native' or backend='transformers' to run those)")
    if value != wanted:
        other = next((b for b, impl in MODEL_IMPL.items() if impl == value), None)
        hint = f" (that is backend={other!r})" if other else ""
        raise InputError(f"engine_args['model_impl']={value!r} disagrees with backend={backend!r}, which runs "
                         f"model_impl={wanted!r}{hint}")


def _check_eager(eager: bool, mode: str) -> None:
    if mode == "inspect" and not eager:
        raise InputError("engine_args['enforce_eager']=False compiles the model, and compiled graphs skip the "
                         "per-layer probes of mode='inspect': use Session(mode='fast') for a compiled engine")
    if mode == "fast" and eager:
        raise InputError("engine_args['enforce_eager']=True contradicts mode='fast' (a compiled engine): use "
                         "Session(mode='inspect') for an eager one")


def _merge_overrides(own: Any, user: Any, backend: str, lab_arch: str) -> Any:
    """User hf_overrides on top of the lab's; on the lab backend the architecture stays the lab's."""
    if callable(user):
        if backend != "lab":
            return user
        return _ComposedOverrides(user, own or {})
    if not isinstance(user, dict):
        raise InputError(f"engine_args['hf_overrides'] must be a dict or a callable, got {type(user).__name__}")
    archs = user.get("architectures")
    if backend == "lab" and archs is not None and list(archs) != [lab_arch]:
        raise InputError(f"engine_args['hf_overrides']['architectures']={archs!r} would replace the lab backend's "
                         f"class ({lab_arch}): use backend='native' or 'transformers' to run vLLM's own classes")
    return {**(own or {}), **user}


class _ComposedOverrides:
    """A user's callable hf_overrides, then the lab's dict (so the architecture stays the lab's)."""

    def __init__(self, user: Callable, own: dict[str, Any]) -> None:
        self.user, self.own = user, own

    def __call__(self, config):
        config = self.user(config)
        for key, value in self.own.items():
            setattr(config, key, value)
        return config

    def __repr__(self) -> str:
        return f"{getattr(self.user, '__name__', 'callable')} then {self.own!r}"


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, dict) else getattr(value, "__name__", "a callable")


def with_head_dtype(engine_args: dict | None, lm_head_dtype: str | None) -> dict:
    """engine_args with vLLM's own `head_dtype` in hf_overrides (what a `vllm serve` user passes as
    `--hf-overrides '{"head_dtype": "float32"}'`); every backend honours it, the lab with float32
    weights packed once (backend/head.py)."""
    from hfvllm_lab.backend.head import CONFIG_FLAG, HEAD_DTYPES

    args = dict(engine_args or {})
    if lm_head_dtype is None:
        return args
    if lm_head_dtype not in HEAD_DTYPES:
        raise InputError(f"lm_head_dtype must be one of {HEAD_DTYPES}, got {lm_head_dtype!r}")
    overrides = args.get("hf_overrides") or {}
    if not isinstance(overrides, dict):
        raise InputError("lm_head_dtype cannot be merged into a callable hf_overrides: set head_dtype in your callable")
    args["hf_overrides"] = {**overrides, CONFIG_FLAG: lm_head_dtype}
    return args
