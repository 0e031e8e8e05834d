"""Map checkpoint names onto the lab model and load them, refusing missing or unexpected ones."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from hfvllm_lab.errors import WeightsError

# Tensors a checkpoint may carry that the model rebuilds itself.
IGNORABLE = (re.compile(r"(^|\.)rotary_emb\.(\w+_)?inv_freq$"), re.compile(r"(^|\.)rotary_emb\.original_inv_freq$"))


@dataclass
class NameMap:
    """Checkpoint name -> module-tree name: one rule per top-level name, no overlaps.

    HF checkpoints are saved either from the causal-LM class (`model.layers...`, `lm_head...`)
    or from the base model alone (`layers...`); both land under `root` (`hf`).
    """

    root: str
    lm_children: frozenset[str]
    base_prefix: str
    base_children: frozenset[str]
    ignore_patterns: tuple[re.Pattern, ...] = field(default_factory=tuple)

    def __call__(self, name: str) -> str | None:
        head = name.split(".", 1)[0]
        if head in self.lm_children:
            return f"{self.root}.{name}"
        if head in self.base_children:
            return f"{self.root}.{self.base_prefix}.{name}"
        return None

    def ignorable(self, name: str) -> bool:
        return any(p.search(name) for p in (*IGNORABLE, *self.ignore_patterns))


def name_map_for(hf_model: nn.Module, root: str) -> NameMap:
    base_prefix = hf_model.base_model_prefix
    base = getattr(hf_model, base_prefix)
    lm_children = {n for n, _ in hf_model.named_children()} | {n for n, _ in hf_model.named_parameters(recurse=False)}
    base_children = {n for n, _ in base.named_children()} | {n for n, _ in base.named_parameters(recurse=False)}
    clash = lm_children & base_children
    if clash:
        raise WeightsError(f"ambiguous checkpoint names: {sorted(clash)} exist both at the top and in the base model")
    patterns = tuple(re.compile(p) for p in (getattr(hf_model, "_keys_to_ignore_on_load_unexpected", None) or []))
    return NameMap(root, frozenset(lm_children), base_prefix, frozenset(base_children), patterns)


@dataclass
class LoadOutcome:
    loaded: set[str]
    ignored: list[str]


def load_checked(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    names: NameMap,
    expected: set[str],
) -> LoadOutcome:
    """Load through vLLM's `AutoWeightsLoader`; raise `WeightsError` listing any missing or
    unexpected tensors once the whole stream has been seen."""
    from vllm.model_executor.models.utils import AutoWeightsLoader

    params = dict(model.named_parameters())
    buffers = {n for n, _ in model.named_buffers()}
    unexpected: list[str] = []
    ignored: list[str] = []
    aliases = _tied_aliases(model)

    def mapped() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if names.ignorable(name):
                ignored.append(name)
                continue
            target = names(name)
            if target in aliases:
                ignored.append(name)  # a tied copy of a tensor loaded under its other name
                continue
            if target is None or (target not in params and target not in buffers):
                unexpected.append(name)
                continue
            yield target, tensor

    loaded = set(AutoWeightsLoader(model).load_weights(mapped()))
    missing = sorted(expected - loaded)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(_short(missing))}")
        if unexpected:
            parts.append(f"unexpected in the checkpoint: {', '.join(_short(sorted(unexpected)))}")
        raise WeightsError("weights do not match the model; " + "; ".join(parts))
    return LoadOutcome(loaded, ignored)


def _short(names: list[str], limit: int = 12) -> list[str]:
    return names if len(names) <= limit else [*names[:limit], f"... ({len(names) - limit} more)"]


def _tied_aliases(model: nn.Module) -> set[str]:
    """Names under which an already-listed parameter appears again (a tied LM head)."""
    seen: dict[int, str] = {}
    aliases: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        else:
            seen[id(param)] = name
    return aliases
