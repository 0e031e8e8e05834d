"""Tiny deterministic checkpoints made offline: the toolkit's embedded models."""

from __future__ import annotations

from pathlib import Path

from hfvllm_lab.errors import ModelNotFoundError
from hfvllm_lab.zoo.specs import DEFAULT, SPECS, ZooSpec

__all__ = ["DEFAULT", "SPECS", "ZooSpec", "names", "spec", "path", "resolve"]


def names() -> list[str]:
    return list(SPECS)


def spec(name: str) -> ZooSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"{name!r} is not a zoo model (zoo: {', '.join(SPECS)}) and not an existing directory"
        ) from None


def path(name: str = DEFAULT) -> Path:
    """The checkpoint directory of zoo model `name`, built on first use and cached."""
    from hfvllm_lab.zoo.build import ensure_checkpoint

    return ensure_checkpoint(spec(name))


def resolve(model: str | Path | None) -> Path:
    """A checkpoint directory for a zoo name, a path, or None (the default model)."""
    if model is None:
        return path(DEFAULT)
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelNotFoundError(f"{candidate} is a directory but holds no config.json")
        return candidate.resolve()
    if isinstance(model, str) and model in SPECS:
        return path(model)
    if candidate.exists():
        raise ModelNotFoundError(f"{candidate} exists but is not a checkpoint directory")
    raise ModelNotFoundError(
        f"no checkpoint at {str(model)!r}: not an existing directory and not a zoo name "
        f"(zoo: {', '.join(SPECS)})"
    )
