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

    def ignorable(self, name: str, is_parameter: bool = False) -> bool:
        """Rotary frequency copies always; the class's own ignore patterns only for names that are
        none of the model's tensors (GPT-2's pattern `attn.bias`, meant for its old mask buffer,
        also matches its real parameter `attn.c_attn.bias`)."""
        if any(p.search(name) for p in IGNORABLE):
            return True
        return not is_parameter and any(p.search(name) for p in self.ignore_patterns)


def base_model(hf_model: nn.Module) -> nn.Module:
    """The base model that `base_model_prefix` names. A class whose prefix names no module of its own
    (Llama4ForCausalLM says "language_model", its base is `model`) gets the prefix of its one base-model
    child on this instance, so every lookup by prefix (names, tensor-parallel plan, forward) agrees."""
    from transformers import PreTrainedModel

    base = getattr(hf_model, hf_model.base_model_prefix, None)
    if isinstance(base, nn.Module):
        return base
    children = [(n, m) for n, m in hf_model.named_children() if isinstance(m, PreTrainedModel)]
    if len(children) != 1:
        raise WeightsError(
            f"{type(hf_model).__name__}.base_model_prefix {hf_model.base_model_prefix!r} names no module, and "
            f"{len(children)} of its children are base models"
        )
    hf_model.base_model_prefix = children[0][0]
    return children[0][1]


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


class CheckpointConversion:
    """transformers' own checkpoint conversion mapping for one HF model, applied to a stream.

    transformers 5 renames some checkpoint keys at load time (gpt_neox `embed_out` -> `lm_head`)
    and fuses per-expert MoE tensors (`experts.0.gate_proj.weight`, ...) into the 3-D parameters
    its modules hold (`experts.gate_up_proj`), through `get_model_conversion_mapping(model)`.
    This applies the same transforms, in transformers' order, to vLLM's weight iterator: renamed
    keys pass straight through; a converter's sources are held until every one of them has
    arrived (experts counted from the target parameter's first dimension), then converted by
    transformers' own operations and handed on under the target's name.
    """

    def __init__(self, hf_model: nn.Module, hf_state: dict[str, tuple[int, ...]]) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        self.model = hf_model
        self.base_prefix = hf_model.base_model_prefix
        self.hf_state = hf_state  # HF parameter/buffer name -> shape, taken before any swap
        transforms = get_model_conversion_mapping(hf_model)
        self.renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        self.converters = [t for t in transforms if isinstance(t, WeightConverter)]
        self._by_pattern = {p: c for c in self.converters for p in c.source_patterns}
        # target key -> (converter, {source pattern: [(checkpoint name, tensor)]})
        self._pending: dict[str, tuple[object, dict[str, list[tuple[str, torch.Tensor]]]]] = {}
        self.converted: list[str] = []  # target names produced by a converter
        self.renamed: dict[str, str] = {}  # checkpoint name -> HF name, where they differ

    def describe(self) -> list[str]:
        return [repr(t) for t in (*self.renamings, *self.converters)]

    def rename(self, name: str) -> tuple[str, str | None]:
        """(HF name, converter source pattern or None), as transformers' loader renames a key."""
        from transformers.core_model_loading import rename_source_key

        renamed, pattern = rename_source_key(name, self.renamings, self.converters, self.base_prefix, self.hf_state)
        if renamed not in self.hf_state and name in self.hf_state:
            return name, None
        return renamed, pattern

    def __call__(self, weights: Iterable[tuple[str, torch.Tensor]],
                 partial: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """The stream converted. `partial` (a load after the first): a converter's sources may arrive in
        part (one expert); those are handed on as `ExpertSlice`s under the target's name."""
        self._pending = {}  # nothing held over from a load that stopped partway
        for name, tensor in weights:
            target, pattern = self.rename(name)
            if pattern is None or target not in self.hf_state:
                if target != name:
                    self.renamed[name] = target
                yield (target if target in self.hf_state else name), tensor
                continue
            converter, collected = self._pending.setdefault(target, (self._by_pattern[pattern], {}))
            collected.setdefault(pattern, []).append((name, tensor))
            if self._complete(target, converter, collected):
                yield from self._convert(target)
        for target in list(self._pending):
            if partial:
                yield from self._slices(target)
            else:
                yield from self._convert(target)

    def _slices(self, target: str) -> Iterator[tuple[str, object]]:
        from hfvllm_lab.backend.reload import expert_slice

        converter, collected = self._pending.pop(target)
        for pattern, items in collected.items():
            for source, tensor in items:
                yield target, expert_slice(source, pattern, converter, tensor)

    def _complete(self, target: str, converter, collected) -> bool:
        from transformers.core_model_loading import MergeModulelist

        per_pattern = 1
        if any(isinstance(op, MergeModulelist) for op in converter.operations):
            per_pattern = self.hf_state[target][0]
        return all(len(collected.get(p, ())) >= per_pattern for p in converter.source_patterns)

    def _convert(self, target: str) -> Iterator[tuple[str, torch.Tensor]]:
        from copy import deepcopy

        from transformers.core_model_loading import dot_natural_key

        template, collected = self._pending.pop(target)
        converter = deepcopy(template)
        for pattern, items in collected.items():
            # Experts in numeric order (experts.2 before experts.10), as transformers sorts them.
            for source, tensor in sorted(items, key=lambda kv: dot_natural_key(kv[0])):
                converter.add_tensor(target, source, pattern, tensor)
        try:
            out = converter.convert(target, model=self.model, config=self.model.config)
        except Exception as exc:  # noqa: BLE001 - re-raised with the checkpoint names
            sources = sorted(n for items in collected.values() for n, _ in items)
            raise WeightsError(
                f"transformers' conversion {converter!r} failed for {target} from {', '.join(_short(sources))}: {exc}"
            ) from exc
        for name, value in out.items():
            value = value[0] if isinstance(value, list) else value
            self.converted.append(name)
            yield name, value


@dataclass
class LoadOutcome:
    loaded: set[str]
    ignored: list[str]


def load_checked(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    names: NameMap,
    expected: set[str],
    conversion: CheckpointConversion | None = None,
    partial: bool = False,
) -> LoadOutcome:
    """Load through vLLM's `AutoWeightsLoader`; raise `WeightsError` listing any missing or
    unexpected tensors once the whole stream has been seen. `partial` (a later load, backend/
    reload.py): any subset loads (single shards of fused layers, single experts); only names that
    match nothing are refused."""
    from hfvllm_lab.backend.reload import ExpertSlice, load_expert_slice

    from vllm.model_executor.models.utils import AutoWeightsLoader

    params = dict(model.named_parameters())
    buffers = {n for n, _ in model.named_buffers()}
    unexpected: list[str] = []
    ignored: list[str] = []
    aliases = _tied_aliases(model)
    # -- fusion hook (backend/fuse.py): unfused checkpoint tensors load as shards of fused layers --
    from hfvllm_lab.backend.fuse import ShardLoader

    shards = ShardLoader(params, getattr(model, "lab_fused_shards", None) or {})
    # Names a module loads itself although they are not its parameters (packed MoE experts).
    accepted = {f"{mod_name}.{n}" for mod_name, mod in model.named_modules() for n in getattr(mod, "lab_accepts", ())}
    copies: dict[str, str] = getattr(model, "lab_tied_copies", None) or {}
    # pipeline parallel: modules another rank holds (backend/pipeline.py) load nothing here
    elsewhere: tuple[str, ...] = getattr(model, "lab_elsewhere", None) or ()

    sliced: set[str] = set()  # packed expert parameters updated one expert at a time
    streamed: set[str] = set()  # parameter names the stream has filled so far
    via_alias: set[str] = set()  # tied parameters filled from their other name

    def mapped() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in (conversion(weights, partial) if conversion is not None else weights):
            target = names(name)
            if elsewhere and target is not None and target.startswith(elsewhere):
                ignored.append(name)  # pipeline parallel: a module another rank holds
                if target in copies:  # a tied head's copy of the first rank's embedding
                    yield copies[target], tensor
                continue
            if isinstance(tensor, ExpertSlice) and target is not None:
                owner, _, attr = target.rpartition(".")
                changed = load_expert_slice(model.get_submodule(owner), attr, tensor)
                sliced.add(f"{owner}.{changed}")
                continue
            known = target is not None and (target in params or target in buffers or target in accepted
                                            or target in shards)
            if names.ignorable(name, known):
                ignored.append(name)
                continue
            if target in aliases:  # a tied parameter listed first under its other name
                if aliases[target] in via_alias or aliases[target] in streamed:
                    ignored.append(name)  # a tied copy of a tensor loaded under its other name
                    continue
                via_alias.add(aliases[target])  # checkpoints may store it under this name only (CamemBERT)
                target = aliases[target]
            streamed.add(target)
            if target in shards:  # fusion hook
                shards.load(target, tensor)
                continue
            if target is None or (target not in params and target not in buffers and target not in accepted):
                unexpected.append(name)
                continue
            yield target, tensor
            if target in copies:  # a tied parameter HF keeps under two names, stored once
                yield copies[target], tensor

    loaded = set(AutoWeightsLoader(model).load_weights(mapped()))
    loaded |= shards.touched() if partial else shards.loaded()  # fusion hook: fused parameters written
    loaded |= sliced
    if partial:
        if unexpected:
            raise WeightsError(f"names that match nothing in the model: {', '.join(_short(sorted(unexpected)))}")
        return LoadOutcome(loaded, ignored)
    missing = sorted((expected - loaded - set(shards.members)) | set(shards.missing()))
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


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """Names under which an already-listed parameter appears again (a tied LM head) -> its first name."""
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases[name] = seen[id(param)]
        else:
            seen[id(param)] = name
    return aliases
